"""The daemon's lifecycle: start-up in the original's order, the pipeline's wiring, signals and
the drain at shutdown."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xrayd import __version__, budget
from xrayd.config import Config
from xrayd.logs import RateLimitedLog, RotatingFile, get_logger
from xrayd.receivers.udp import AddressError, bind_udp
from xrayd.stats import (
    SEGMENTS_DROPPED,
    SEGMENTS_SENT,
    SEGMENTS_SPILLED,
    SPOOL_RECOVERED,
    Stats,
)

if TYPE_CHECKING:
    from xrayd.batcher import Spill
    from xrayd.spool import Spool

# The shutdown drain time is Config.drain_seconds (default 20 s: a few rounds of 2-second
# attempts, well under the 30 s a container platform waits before SIGKILL).
REPLAY_THREADS = 4
SIGNAL_POLL_SECONDS = 1.0


class StartupError(Exception):
    """A fatal start-up problem (exit code 1)."""


@dataclass
class Shutdown:
    """Signals, handled in one place: the first starts a drain, a second ends it at once."""

    requested: threading.Event
    signal_name: str = ""
    count: int = 0

    def handle(self, signum: int, _frame: object) -> None:
        self.count += 1
        if self.count > 1:
            get_logger().warning("Got a second shutdown signal: exiting without draining")
            os._exit(1)
        self.signal_name = {signal.SIGINT: "interrupt", signal.SIGTERM: "terminated"}.get(
            signum, str(signum)
        )
        self.requested.set()


class Daemon:
    def __init__(self, config: Config, telemetry_interval: float | None = None) -> None:
        self.config = config
        self.telemetry_interval = telemetry_interval  # None: the original's 60 s
        self.telemetry = None
        self.http = None
        self.signing_proxy = None
        self.trimmer = None
        self.log = get_logger()
        self.stats = Stats()
        self.logs = RateLimitedLog(self.log)
        self.shutdown = Shutdown(threading.Event())
        self.receiver = None
        self.uploader = None
        self.queue = None
        self.spool = None
        self.admin = None
        self.intake_open = False
        self.offline = None

    def start(self) -> None:
        cfg = self.config
        log = self.log
        log.info("Initializing AWS X-Ray daemon %s (xrayd)", __version__)
        if cfg.concurrency < 1:
            raise StartupError(f"Concurrency must be at least 1, not {cfg.concurrency}")
        try:
            sock = bind_udp(cfg.udp_address)
        except AddressError as exc:
            raise StartupError(str(exc)) from None
        log.debug("Listening on UDP %s", cfg.udp_address)
        try:
            megabytes = budget.resolve_buffer_mb(
                cfg.buffer_memory_mb, budget.host_memory_bytes(), budget.cgroup_memory_limit()
            )
        except budget.BudgetError as exc:
            sock.close()
            raise StartupError(str(exc)) from None
        log.info("Using buffer memory limit of %d MB", megabytes)
        log.info("%d segment buffers allocated", budget.original_buffer_count(megabytes))

        if cfg.offline:
            self._start_offline(sock, megabytes)
            return

        # Heavy imports (botocore) only now that the port is bound.
        from xrayd import aws
        from xrayd.batcher import Batcher
        from xrayd.exporters.xray import XRayExporter
        from xrayd.receivers.udp import UdpReceiver
        from xrayd.segment_queue import SegmentQueue
        from xrayd.uploader import Uploader

        try:
            region, source = aws.resolve_region(cfg.region, cfg.local_mode, log=log)
            proxy = aws.proxy_url(cfg.proxy_address)
            upstream = aws.xray_endpoint_for(region, cfg.endpoint)
        except aws.AwsSetupError as exc:
            sock.close()
            raise StartupError(str(exc)) from None
        if source == "config":
            log.debug("Fetched region %s from config", region)
        else:
            log.debug("Fetch region %s from %s", region, source)
        if cfg.endpoint:
            log.debug("Using Endpoint read from Config file: %s", cfg.endpoint)
        if proxy:
            log.debug("Using proxy address: %s", proxy)
        context = aws.create_context(region, cfg.endpoint, cfg.no_verify_ssl, proxy,
                                     cfg.role_arn, log)
        log.debug("Using Endpoint: %s", context.endpoint)
        log.info("Using region: %s", region)
        if cfg.resource_arn:
            log.debug("ARN of the AWS resource running the daemon: %s", cfg.resource_arn)

        batcher = Batcher(budget=megabytes * budget.MIB)
        self.queue = SegmentQueue(batcher, time.monotonic)
        self.spool = self._open_spool()
        # The spool's replay threads upload next to the workers: room for their connections.
        pool = cfg.concurrency + (REPLAY_THREADS if self.spool is not None else 0)
        exporter = XRayExporter(context, pool_size=pool)
        self.uploader = Uploader(self.queue, exporter, self.stats, self.logs, cfg.concurrency,
                                 spool=self.spool, replay_threads=REPLAY_THREADS)
        self.receiver = UdpReceiver(
            sock, self.queue.put, self.stats.intake(), self._spilled, self.logs,
            put_many=self.queue.put_many,
        )
        log.debug("Batch size: %d", batcher.max_batch)
        self._start_admin()
        # Everything loaded so far (botocore's tables above all) lives as long as the daemon:
        # out of the collector's sight, a full collection takes a few milliseconds instead of
        # tens, during which the UDP reader would wait for the GIL and the kernel drop datagrams.
        gc.freeze()
        # The UDP reader and the upload threads are I/O-bound: a thread waiting for the GIL
        # gets it within 0.5 ms instead of 5, so the reader drains the kernel buffer in time.
        sys.setswitchinterval(0.0005)
        self.uploader.start()
        self.receiver.start()
        self._start_trimmer()
        self.intake_open = True
        self._start_telemetry(aws, context, exporter)
        self._start_proxy(context, upstream)
        log.info("Ready: receiving segments on UDP %s", cfg.udp_address)

    def _start_trimmer(self) -> None:
        from xrayd.memory import DrainTrimmer

        queue = self.queue
        assert queue is not None
        self.trimmer = DrainTrimmer(lambda: queue.snapshot()[0])
        self.trimmer.start()

    def _open_spool(self) -> Spool | None:
        cfg = self.config
        if not cfg.spool_dir:
            return None
        from xrayd.spool import Spool

        interval = cfg.spool_fsync_interval_ms / 1000 if cfg.spool_fsync_interval_ms > 0 else 0
        spool = Spool(cfg.spool_dir, cfg.spool_max_mb * budget.MIB, interval, log=self.log)
        try:
            found = spool.open()
        except OSError as exc:
            raise StartupError(f"Cannot use spool directory {cfg.spool_dir}: {exc}") from None
        self.stats.add(SPOOL_RECOVERED, found)
        self.log.info("Using spool directory %s (limit %d MB): %d segments to upload from an "
                      "earlier run", cfg.spool_dir, cfg.spool_max_mb, found)
        return spool

    def _start_admin(self) -> None:
        address = self.config.admin_address
        if not address:
            return
        from xrayd.admin import Sources, make_server

        uploader, spool, queue = self.uploader, self.spool, self.queue
        assert uploader is not None and queue is not None
        breaker = uploader.breaker

        def backend_ready() -> tuple[bool, str]:
            if not breaker.is_open:
                return True, ""
            return False, "the X-Ray API has not answered the last calls (backend unavailable)"

        sources = Sources(
            self.stats, lambda: self.intake_open, backend_ready, queue.snapshot,
            spool.depth if spool is not None else None, lambda: uploader.limiter.rate,
        )
        self.admin = make_server(address, sources, self.config.allowed_hosts)
        try:
            self.admin.start()
        except OSError as exc:
            raise StartupError(f"admin http server failed to listen on {address}: {exc}") from None
        self.log.info("Starting admin http server (/healthz, /readyz, /metrics) on %s", address)

    def _start_offline(self, sock, megabytes: int) -> None:
        """Offline mode: the same pipeline into the local store; no region, no credentials."""
        from xrayd import offline
        from xrayd.batcher import Batcher
        from xrayd.receivers.udp import UdpReceiver
        from xrayd.segment_queue import SegmentQueue
        from xrayd.uploader import Uploader

        try:
            self.offline = offline.start(self.config, self.log, self._rejected)
        except offline.OfflineError as exc:
            sock.close()
            raise StartupError(str(exc)) from None
        batcher = Batcher(budget=megabytes * budget.MIB)
        self.queue = SegmentQueue(batcher, time.monotonic)
        self.uploader = Uploader(self.queue, self.offline.exporter, self.stats, self.logs,
                                 self.config.concurrency)
        self.receiver = UdpReceiver(
            sock, self.queue.put, self.stats.intake(), self._spilled, self.logs,
            put_many=self.queue.put_many,
        )
        self.log.debug("Batch size: %d", batcher.max_batch)
        self._start_admin()
        self.uploader.start()
        self.receiver.start()
        self._start_trimmer()
        self.intake_open = True
        self.log.info("Trace viewer and X-Ray API at %s", self.offline.url())
        self.log.info("Ready: receiving segments on UDP %s", self.config.udp_address)

    def _rejected(self, rejection) -> None:
        """A document the offline store refused (it was counted as sent when queued)."""
        from xrayd.stats import SEGMENTS_UNPROCESSED

        self.stats.add(SEGMENTS_SENT, -1)
        self.stats.add(SEGMENTS_UNPROCESSED, label=rejection.code)
        self.logs.error(
            f"unprocessed:{rejection.code}",
            f"Unprocessed segment: Id {rejection.id or 'missing'}, ErrorCode {rejection.code}, "
            f"Message {rejection.message} (kept in the store's rejected list)",
        )

    def _start_telemetry(self, aws, context, exporter) -> None:
        from xrayd import telemetry

        cfg = self.config

        def make_cycle() -> telemetry.TelemetryCycle:
            fetch = None if cfg.local_mode else aws.instance_metadata(context.session).get
            identity = telemetry.resolve_identity(
                cfg.resource_arn, cfg.local_mode, os.environ, fetch, self.log)
            return telemetry.TelemetryCycle(self.stats, exporter.send, identity, self.log)

        interval = self.telemetry_interval or telemetry.INTERVAL_SECONDS
        self.telemetry = telemetry.TelemetryThread(make_cycle, self.log, interval)
        self.telemetry.start()

    def _start_proxy(self, context, upstream: str) -> None:
        from xrayd.receivers.udp import split_address
        from xrayd.server.proxy import SigningProxy, is_loopback

        cfg, log = self.config, self.log
        proxy = SigningProxy(context, upstream, self.logs,
                             idle_timeout=cfg.proxy_idle_conn_timeout, stats=self.stats)
        log.info("HTTP Proxy server using X-Ray Endpoint : %s", upstream)
        try:
            host, _port = split_address(cfg.tcp_address)
        except AddressError as exc:
            log.error("proxy http server failed to listen: %s", exc)
            return
        if not is_loopback(host):
            log.warning(
                "The TCP proxy listens on %s, not a loopback address: whoever can reach it "
                "gets sampling API calls signed with the daemon's credentials",
                cfg.tcp_address)
        log.info("Starting proxy http server on %s", cfg.tcp_address)
        self.signing_proxy = proxy
        self.http = proxy.server(cfg.tcp_address, cfg.allowed_hosts)
        try:
            self.http.start()
        except Exception as exc:  # as the original: the daemon runs on without the proxy
            log.error("proxy http server failed to listen: %s", exc)

    def _spilled(self, spill: Spill) -> None:
        if spill.evicted:
            self.stats.add(SEGMENTS_SPILLED, spill.evicted, label="evicted_oldest")
            self.logs.warn("spill-evicted", f"Spilling over {spill.evicted} segments")
        if spill.dropped:
            self.stats.add(SEGMENTS_SPILLED, spill.dropped, label="dropped_new")
            self.logs.warn("spill-dropped", "Segment dropped. Consider increasing memory limit")

    def install_signal_handlers(self, log_file: RotatingFile | None = None) -> None:
        signal.signal(signal.SIGINT, self.shutdown.handle)
        signal.signal(signal.SIGTERM, self.shutdown.handle)
        if log_file is not None:
            # logrotate moves the file away and sends SIGHUP: write to a new file at the path.
            signal.signal(signal.SIGHUP, lambda _s, _f: log_file.reopen())

    def wait(self) -> None:
        # Short waits: a signal the kernel delivers to another thread only runs its Python
        # handler once the main thread executes bytecode again.
        while not self.shutdown.requested.wait(SIGNAL_POLL_SECONDS):
            pass
        self.log.info("Got shutdown signal: %s", self.shutdown.signal_name)

    def _wait_drained(self, timeout: float) -> bool:
        """The queue's wait_drained, a second at a time: the drain runs in the main thread,
        which must get to run a second signal's handler (see wait)."""
        assert self.queue is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self.queue.wait_drained(max(0.0, min(left, SIGNAL_POLL_SECONDS))):
                return True
            if left <= SIGNAL_POLL_SECONDS:
                return False

    def stop(self, drain_seconds: float | None = None) -> None:
        """Stop intake, upload what is buffered within ``drain_seconds``, spool what is left
        when a spool is configured, then return."""
        log = self.log
        if drain_seconds is None:
            drain_seconds = float(self.config.drain_seconds)
        log.debug("Shutdown Initiated. Current epoch in nanoseconds: %d", time.time_ns())
        self.intake_open = False
        if self.http is not None:
            self.http.stop()
        if self.signing_proxy is not None:
            self.signing_proxy.close()
        if self.receiver is not None:
            self.receiver.stop()
        if self.offline is not None:
            self.offline.stop()
        if self.queue is not None and self.uploader is not None:
            self.queue.close()
            # Near the end of the drain time, whatever is still buffered goes to the spool.
            reserve = min(3.0, drain_seconds / 4) if self.spool is not None else 0.0
            if self.spool is not None:
                self.uploader.stop_replay()
            drained = self._wait_drained(drain_seconds - reserve)
            if not drained and self.spool is not None:
                log.info("Shutdown drain: spooling what is still buffered")
                self.uploader.divert()
                drained = self._wait_drained(reserve)
            if not drained:
                queued = self.queue.abandon()
                in_flight = self.queue.snapshot()[2]
                self.stats.add(SEGMENTS_DROPPED, queued, label="shutdown")
                log.error(
                    "Shutdown drain time of %.0f s ran out: %d buffered segments dropped, "
                    "%d batches still in flight", drain_seconds, queued, in_flight,
                )
            else:
                self.uploader.join(1.0)
            if self.spool is not None:
                self.spool.sync()
            if self.telemetry is not None:
                self.telemetry.stop()
            self.uploader.exporter.close()
        if self.admin is not None:
            self.admin.stop()
        if self.trimmer is not None:
            self.trimmer.stop()
        log.debug(
            "Trace segment: received: %d, truncated: %d, processed: %d",
            self.stats.accepted, self.stats.get(SEGMENTS_SPILLED),
            self.stats.get(SEGMENTS_SENT),
        )
        log.info("Shutdown summary: %s", self.stats.summary())
        log.debug("Shutdown finished. Current epoch in nanoseconds: %d", time.time_ns())


def run(config: Config, log_file: RotatingFile | None = None) -> int:
    daemon = Daemon(config)
    daemon.install_signal_handlers(log_file)
    try:
        daemon.start()
    except StartupError as exc:
        daemon.log.error("%s", exc)
        return 1
    daemon.wait()
    daemon.stop()
    logging.shutdown()
    return 0
