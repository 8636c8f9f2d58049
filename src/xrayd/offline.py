"""Offline mode's parts: the trace store (its writer and readers), the sampling engine and the
TCP server answering the X-Ray API and the viewer. Nothing here needs AWS (no botocore)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from xrayd.config import Config
from xrayd.exporters.local import LocalExporter
from xrayd.rejections import RecentRejections
from xrayd.sampling.engine import SamplingEngine
from xrayd.sampling.persist import SqliteRuleStore
from xrayd.sampling.rules import RuleError, parse_rules_file
from xrayd.server.threaded import ThreadedHttpServer
from xrayd.server.viewer_routes import routes as viewer_routes
from xrayd.server.xray_api import StoreReader, XRayApi, make_server
from xrayd.stats import Stats
from xrayd.store.groups import GroupStore
from xrayd.store.schema import StoreLocked, default_path
from xrayd.store.writer import Retention, StoreWriter

DEFAULT_RETENTION_HOURS = 72
DEFAULT_MAX_SIZE_MB = 1024
# Documents a batch in offline mode (the X-Ray API's 50 is not a limit here). Each upload worker
# waits until its batch is committed; with at least MIN_WORKERS workers, up to 16,000 documents
# are in the store's pipeline at once: full commits (5,000 documents) one after another, the next
# parsed while one is written, as when the writer held up to 20,000 queued documents. (With 8
# workers, commits alternated between 5,000 and 3,000 and a loaded host fell behind sooner.)
BATCH_SIZE = 1000
MIN_WORKERS = 16


class OfflineError(Exception):
    pass


@dataclass
class Offline:
    writer: StoreWriter
    reader: StoreReader
    sampling: SamplingEngine
    server: ThreadedHttpServer
    store_path: str
    rules: SqliteRuleStore
    groups: GroupStore

    @property
    def exporter(self) -> LocalExporter:
        return LocalExporter(self.writer)

    def url(self) -> str:
        host, port = self.server.bound or ("127.0.0.1", 2000)
        shown = f"[{host}]" if ":" in host else host
        if shown in ("0.0.0.0", "[::]"):
            shown = "127.0.0.1"
        return f"http://{shown}:{port}/"

    def stop(self) -> None:
        self.server.stop()
        self.reader.close()
        self.rules.close()
        self.groups.close()


def load_rules(path: str) -> list[dict]:
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_rules_file(handle.read())
    except OSError as exc:
        raise OfflineError(f"Unable to read sampling rules file {path}: {exc.strerror}") from None
    except RuleError as exc:
        raise OfflineError(f"Invalid sampling rules file {path}: {exc}") from None


def start(cfg: Config, log: logging.Logger, stats: Stats | None = None,
          rejections: RecentRejections | None = None) -> Offline:
    """Open the store, load the rules and start the TCP server; OfflineError on failure.
    ``stats`` and ``rejections``: the daemon's, shown by the viewer (counts per intake, the
    last rejected inputs)."""
    rules = load_rules(cfg.sampling_rules_file)
    path = cfg.store_path or default_path()
    retention = Retention(
        hours=float(cfg.store_retention_hours or DEFAULT_RETENTION_HOURS),
        max_bytes=(cfg.store_max_size_mb or DEFAULT_MAX_SIZE_MB) * 1024 * 1024,
    )
    try:
        writer = StoreWriter(path, retention, log=log)
    except StoreLocked as exc:
        message = str(exc)
        raise OfflineError(message[:1].upper() + message[1:]) from None
    except Exception as exc:
        raise OfflineError(f"Unable to open trace store {path}: {exc}") from None
    writer.enforce_retention_now()
    try:
        rule_store = SqliteRuleStore(path)
        sampling = SamplingEngine(rules, store=rule_store, on_invalid=log.warning)
    except Exception as exc:
        writer.close()
        raise OfflineError(f"Unable to load the sampling rules kept in {path}: {exc}") from None
    reader = StoreReader(path)
    info = {"store": path, "retention_hours": retention.hours,
            "max_size_mb": retention.max_bytes // (1024 * 1024)}
    api = XRayApi(writer, reader, sampling)
    server = make_server(cfg.tcp_address, api,
                         viewer_routes(reader, info, stats=stats, rejections=rejections),
                         cfg.allowed_hosts)
    try:
        server.start()
    except OSError as exc:
        writer.close()
        reader.close()
        rule_store.close()
        api.groups.close()
        raise OfflineError(f"listen tcp {cfg.tcp_address}: {exc.strerror or exc}") from None
    # Every rule in force counts, the Default rule too (it always applies).
    log.info("Offline mode: %d sampling rules loaded, trace store %s (retention %g hours, "
             "%d MB)", sampling.rule_count, path, retention.hours,
             retention.max_bytes // (1024 * 1024))
    return Offline(writer, reader, sampling, server, path, rule_store, api.groups)
