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
    from xrayd.exporters.otlp_settings import OtlpSettings
    from xrayd.fanout import Fanout, Lane
    from xrayd.segment_queue import SegmentQueue
    from xrayd.spool import Spool

# The shutdown drain time is Config.drain_seconds (default 20 s: a few rounds of 2-second
# attempts, well under the 30 s a container platform waits before SIGKILL).
REPLAY_THREADS = 4
SIGNAL_POLL_SECONDS = 1.0
# Documents per OTLP request: fewer, larger requests than PutTraceSegments' limit of 50.
OTLP_MAX_BATCH = 128


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
        self.lanes: list[Lane] = []  # the primary exporter's first (queue/uploader/spool above)
        self.fanout: Fanout | None = None  # where receivers put documents (every lane)
        self.otlp_exporter = None  # the OTLP exporter, when configured
        self.otlp = None  # OtlpIntake: T1S/T1U/M1 datagrams and the OTLP receivers
        self.otlp_servers: list = []  # OTLP/HTTP and OTLP/gRPC receivers that started
        self.rejections = None  # offline mode: the last rejections, for the viewer

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
        try:
            otlp = self._otlp_settings()
        except ValueError as exc:
            sock.close()
            raise StartupError(str(exc)) from None

        if cfg.offline:
            self._start_offline(sock, megabytes, otlp)
            return

        # Heavy imports (botocore) only now that the port is bound.
        from xrayd import aws
        from xrayd.exporters.xray import XRayExporter

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

        share = self._budget_share(megabytes, otlp)
        spool = self._open_spool()
        # The spool's replay threads upload next to the workers: room for their connections.
        pool = cfg.concurrency + (REPLAY_THREADS if spool is not None else 0)
        exporter = XRayExporter(context, pool_size=pool)
        self._add_lane("xray", exporter, share, spool)
        if otlp is not None:
            self._add_otlp_lane(otlp, share, context.credentials)
        self._make_receiver(sock)
        log.debug("Batch size: %d", self.queue.batcher.max_batch)
        self._start_admin()
        self._start_otlp_receivers()
        # Everything loaded so far (botocore's tables above all) lives as long as the daemon:
        # out of the collector's sight, a full collection takes a few milliseconds instead of
        # tens, during which the UDP reader would wait for the GIL and the kernel drop datagrams.
        gc.freeze()
        # The UDP reader and the upload threads are I/O-bound: a thread waiting for the GIL
        # gets it within 0.5 ms instead of 5, so the reader drains the kernel buffer in time.
        sys.setswitchinterval(0.0005)
        for lane in self.lanes:
            lane.uploader.start()
        self.receiver.start()
        self._start_trimmer()
        self.intake_open = True
        self._start_telemetry(aws, context, exporter)
        self._start_proxy(context, upstream)
        log.info("Ready: receiving segments on UDP %s", cfg.udp_address)

    def _otlp_intake(self):
        """The OpenTelemetry intake, putting converted spans where the UDP receiver puts
        segments (light: protobuf, grpc and the OpenTelemetry packages are only imported by the
        receivers that use them). M1 metrics go to the OTLP exporter when there is one."""
        from xrayd.otel import Options
        from xrayd.receivers.otlp_intake import (
            IN_FLIGHT_BYTES,
            ByteGate,
            OtlpIntake,
            stats_count,
        )

        cfg, queue, fanout = self.config, self.queue, self.fanout
        assert queue is not None and fanout is not None
        target = queue if len(self.lanes) == 1 else fanout
        names = frozenset(n.strip() for n in cfg.otel_indexed_attributes.split(",") if n.strip())
        options = Options(indexed_attributes=names,
                          index_all_attributes=cfg.otel_index_all_attributes)
        queues = [lane.queue for lane in self.lanes] or [queue]

        def free_bytes() -> int:  # in the fullest lane: every lane takes every document
            return min(q.batcher.budget - q.snapshot()[0] for q in queues)

        # Conversion in worker processes (one a core, 2 to 4) and two threads feeding them
        # T1S datagrams: all started by the first OpenTelemetry request, not before.
        return OtlpIntake(target.put_many, self._spilled, self.logs, options,
                          free_bytes=free_bytes,
                          capacity=min(q.batcher.budget for q in queues),
                          gate=ByteGate(max(IN_FLIGHT_BYTES,
                                            sum(q.batcher.budget for q in queues) // 2)),
                          metrics_sink=self.forward_metrics if self.otlp_exporter else None,
                          put_otel=fanout.put_otel if any(lane.takes_otlp for lane in
                                                          self.lanes) else None,
                          workers=max(2, min(4, os.cpu_count() or 2)), backlog_threads=2,
                          shared_count=stats_count(self.stats.add))

    def _start_otlp_receivers(self) -> None:
        """OTLP/HTTP and OTLP/gRPC, where configured (offline mode: on by default). A port
        that cannot be bound is logged and the daemon goes on without that receiver."""
        from xrayd.config import OTLP_GRPC_DEFAULT, OTLP_HTTP_DEFAULT, otlp_address

        cfg, log = self.config, self.log
        http = otlp_address(cfg.otlp_http_address, cfg.offline, OTLP_HTTP_DEFAULT)
        grpc_address = otlp_address(cfg.otlp_grpc_address, cfg.offline, OTLP_GRPC_DEFAULT)
        if not http and not grpc_address:
            return
        from xrayd.receivers.otlp_intake import stats_count

        count = stats_count(self.stats.add)
        assert self.otlp is not None
        if http:
            from xrayd.receivers import otlp_http

            server = otlp_http.make_server(http, self.otlp, count)
            self._start_otlp_server("OTLP/HTTP", http, server, "POST /v1/traces")
        if grpc_address:
            try:
                from xrayd.receivers.otlp_grpc import OtlpGrpcReceiver

                receiver = OtlpGrpcReceiver(grpc_address, self.otlp, count)
            except Exception as exc:  # grpcio missing or broken: the rest still works
                log.error("OTLP/gRPC receiver not started: %s", exc)
                return
            self._start_otlp_server("OTLP/gRPC", grpc_address, receiver,
                                    "opentelemetry TraceService/Export")

    def _start_otlp_server(self, what: str, address: str, server, detail: str) -> None:
        try:
            server.start()
        except (OSError, ValueError) as exc:
            self.log.error("%s receiver not started: cannot listen on %s: %s (the daemon goes "
                           "on without it; set another address, or off)", what, address,
                           getattr(exc, "strerror", None) or exc)
            return
        self.otlp_servers.append(server)
        self.log.info("Receiving OpenTelemetry spans by %s on %s (%s)", what, address, detail)

    def _start_trimmer(self) -> None:
        from xrayd.memory import DrainTrimmer

        queues = [lane.queue for lane in self.lanes]
        self.trimmer = DrainTrimmer(lambda: sum(q.snapshot()[0] for q in queues))
        self.trimmer.start()

    def _otlp_settings(self) -> OtlpSettings | None:
        from xrayd.exporters.otlp_settings import exports_to_itself, resolve_settings

        cfg = self.config
        settings = resolve_settings(cfg.otlp_endpoint, cfg.otlp_sigv4_region, os.environ,
                                    verify=not cfg.no_verify_ssl)
        if settings is None:
            return None
        for warning in settings.warnings:
            self.log.warning("%s", warning)
        if exports_to_itself(settings.traces_url, self._otlp_http_receiver()):
            if cfg.otlp_endpoint:
                raise ValueError(f"OTLP export to {settings.traces_url} is this daemon's own "
                                 "OTLP/HTTP receiver: spans would loop; give another "
                                 "--otlp-endpoint, or --otlp-http-address off")
            self.log.warning("Not exporting OTLP to %s (from OTEL_EXPORTER_OTLP_*): it is this "
                             "daemon's own OTLP/HTTP receiver and spans would loop",
                             settings.traces_url)
            return None
        if cfg.proxy_address or os.environ.get("HTTPS_PROXY"):
            from dataclasses import replace

            from xrayd import aws

            try:
                settings = replace(settings, proxy=aws.proxy_url(cfg.proxy_address))
            except aws.AwsSetupError as exc:
                raise ValueError(str(exc)) from None
        return settings

    def _otlp_http_receiver(self) -> tuple[str, int] | None:
        from xrayd.config import OTLP_HTTP_DEFAULT, otlp_address
        from xrayd.receivers.udp import split_address

        cfg = self.config
        address = otlp_address(cfg.otlp_http_address, cfg.offline, OTLP_HTTP_DEFAULT)
        try:
            return split_address(address) if address else None
        except AddressError:
            return None

    @staticmethod
    def _budget_share(megabytes: int, otlp: OtlpSettings | None) -> int:
        """Each lane's share of the memory budget: the whole budget for one exporter, equal
        shares for several (docs/otlp-export.md)."""
        return megabytes * budget.MIB // (1 if otlp is None else 2)

    def _add_lane(self, name: str, exporter, share: int, spool: Spool | None,
                  max_batch: int | None = None, takes_otlp: bool = False,
                  logs: RateLimitedLog | None = None, workers: int = 0) -> Lane:
        """A queue (``share`` bytes of the budget), upload workers and counters for one
        exporter; the first lane added is the primary one."""
        from xrayd.batcher import MAX_BATCH, Batcher
        from xrayd.fanout import Fanout, Lane, LaneStats, PrefixedLog
        from xrayd.segment_queue import SegmentQueue
        from xrayd.uploader import Uploader

        primary = not self.lanes
        queue = SegmentQueue(Batcher(budget=share, max_batch=max_batch or MAX_BATCH),
                             time.monotonic)
        stats = LaneStats(self.stats, name, primary)
        if logs is None:
            logs = self.logs if primary else PrefixedLog(self.logs, f"[{name} exporter] ")
        uploader = Uploader(queue, exporter, stats, logs, workers or self.config.concurrency,
                            spool=spool, replay_threads=REPLAY_THREADS)
        lane = Lane(name, queue, uploader, stats, logs, spool, takes_otlp)
        self.lanes.append(lane)
        if primary:
            self.queue, self.uploader, self.spool = queue, uploader, spool
        self.fanout = Fanout(self.lanes)
        return lane

    def _add_otlp_lane(self, settings: OtlpSettings, share: int, credentials=None) -> None:
        from xrayd.exporters.otlp import OtlpExporter
        from xrayd.fanout import PrefixedLog

        if settings.sigv4_region and credentials is None:
            from xrayd import aws

            credentials = aws.CredentialSource(aws.new_session()).frozen
        spool = self._open_spool("otlp")
        lane: Lane | None = None

        def counts(name: str, amount: int, label: str) -> None:
            if lane is not None:
                lane.stats.add(name, amount, label)

        logs = PrefixedLog(self.logs, "[otlp exporter] ")
        self.otlp_exporter = OtlpExporter(settings, credentials if settings.sigv4_region else None,
                                          counts, logs=logs)
        lane = self._add_lane("otlp", self.otlp_exporter, share, spool, max_batch=OTLP_MAX_BATCH,
                              takes_otlp=True, logs=logs)
        signed = f", SigV4-signed for {settings.sigv4_region}" if settings.sigv4_region else ""
        self.log.info("Exporting traces as OTLP to %s%s", settings.traces_url, signed)

    def forward_metrics(self, request: bytes) -> bool:
        """An OTLP metrics request (from an M1 datagram) to the OTLP exporter's /v1/metrics;
        False when there is none or it cannot take it (counted there)."""
        exporter = self.otlp_exporter
        return exporter is not None and exporter.forward_metrics(request)

    def _make_receiver(self, sock) -> None:
        from xrayd.receivers.udp import UdpReceiver

        assert self.queue is not None and self.fanout is not None
        # One exporter: straight into its queue, as before fan-out existed.
        target = self.queue if len(self.lanes) == 1 else self.fanout
        self.otlp = self._otlp_intake()
        self.otlp.rejections = self.rejections
        self.receiver = UdpReceiver(
            sock, target.put, self.stats.intake(), self._spilled, self.logs,
            put_many=target.put_many, otlp=self.otlp, rejections=self.rejections,
        )

    def _open_spool(self, exporter: str = "") -> Spool | None:
        """The spool of an exporter: the X-Ray API's is --spool-dir itself (where earlier
        versions kept it, so an upgrade replays what they left), any other exporter's a
        subdirectory named after it."""
        cfg = self.config
        if not cfg.spool_dir:
            return None
        from xrayd.spool import Spool

        directory = os.path.join(cfg.spool_dir, exporter) if exporter else cfg.spool_dir
        interval = cfg.spool_fsync_interval_ms / 1000 if cfg.spool_fsync_interval_ms > 0 else 0
        spool = Spool(directory, cfg.spool_max_mb * budget.MIB, interval, log=self.log)
        try:
            found = spool.open()
        except OSError as exc:
            raise StartupError(f"Cannot use spool directory {directory}: {exc}") from None
        if not exporter:
            self.stats.add(SPOOL_RECOVERED, found)
        self.log.info("Using spool directory %s (limit %d MB): %d segments to upload from an "
                      "earlier run", directory, cfg.spool_max_mb, found)
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

        lanes = list(self.lanes)
        sources = Sources(
            self.stats, lambda: self.intake_open, backend_ready, queue.snapshot,
            spool.depth if spool is not None else None, lambda: uploader.limiter.rate,
            lanes=lambda: lanes,
        )
        self.admin = make_server(address, sources, self.config.allowed_hosts)
        try:
            self.admin.start()
        except OSError as exc:
            raise StartupError(f"admin http server failed to listen on {address}: {exc}") from None
        self.log.info("Starting admin http server (/healthz, /readyz, /metrics) on %s", address)

    def _start_offline(self, sock, megabytes: int, otlp: OtlpSettings | None) -> None:
        """Offline mode: the same pipeline into the local store (and OTLP export when set); no
        region, no credentials (unless OTLP export is SigV4-signed)."""
        from xrayd import offline
        from xrayd.rejections import RecentRejections

        self.rejections = RecentRejections()
        try:
            self.offline = offline.start(self.config, self.log, stats=self.stats,
                                         rejections=self.rejections)
        except offline.OfflineError as exc:
            sock.close()
            raise StartupError(str(exc)) from None
        share = self._budget_share(megabytes, otlp)
        # Big batches and many workers: each waits for its batch's commit (docs/offline.md).
        self._add_lane("local", self.offline.exporter, share, None,
                       max_batch=offline.BATCH_SIZE,
                       workers=max(self.config.concurrency, offline.MIN_WORKERS))
        if otlp is not None:
            try:
                self._add_otlp_lane(otlp, share)
            except StartupError:
                sock.close()
                self.offline.stop()
                self.offline.writer.close()
                raise
        self._make_receiver(sock)
        assert self.queue is not None
        self.log.debug("Batch size: %d", self.queue.batcher.max_batch)
        self._start_admin()
        self._start_otlp_receivers()
        for lane in self.lanes:
            lane.uploader.start()
        self.receiver.start()
        self._start_trimmer()
        self.intake_open = True
        self.log.info("Trace viewer and X-Ray API at %s", self.offline.url())
        self.log.info("Ready: receiving segments on UDP %s", self.config.udp_address)

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
        from xrayd.server.policy import is_loopback_name
        from xrayd.server.proxy import SigningProxy

        cfg, log = self.config, self.log
        proxy = SigningProxy(context, upstream, self.logs,
                             idle_timeout=cfg.proxy_idle_conn_timeout, stats=self.stats)
        log.info("HTTP Proxy server using X-Ray Endpoint : %s", upstream)
        try:
            host, _port = split_address(cfg.tcp_address)
        except AddressError as exc:
            log.error("proxy http server failed to listen: %s", exc)
            return
        if not is_loopback_name(host):
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
        """The primary lane's spills (the receivers report them)."""
        self.lanes[0].spilled(spill)

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

    def _wait_drained(self, timeout: float, queues: list[SegmentQueue] | None = None) -> bool:
        """Every lane's wait_drained (they drain side by side), a second at a time: the drain
        runs in the main thread, which must get to run a second signal's handler (see wait)."""
        if queues is None:
            queues = [lane.queue for lane in self.lanes]
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            waiting = [queue for queue in queues if not queue.wait_drained(0.0)]
            if not waiting:
                return True
            if waiting[0].wait_drained(max(0.0, min(left, SIGNAL_POLL_SECONDS))) and \
                    len(waiting) == 1:
                return True
            if left <= SIGNAL_POLL_SECONDS:
                return all(queue.wait_drained(0.0) for queue in queues)

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
        for server in self.otlp_servers:
            server.stop()
        if self.receiver is not None:
            self.receiver.stop()
        if self.otlp is not None:
            self.otlp.close()  # what waits for conversion goes into the queue before its close
        if self.offline is not None:
            self.offline.stop()
        if self.lanes:
            self._drain(drain_seconds)
            if self.telemetry is not None:
                self.telemetry.stop()
            for lane in self.lanes:
                lane.exporter.close()
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
        if len(self.lanes) > 1:
            for lane in self.lanes:
                log.info("Shutdown summary: %s", lane.summary())
        log.debug("Shutdown finished. Current epoch in nanoseconds: %d", time.time_ns())


    def _drain(self, drain_seconds: float) -> None:
        """Every lane uploads what it holds; near the end of the drain time, what a lane with
        a spool still holds goes there; what is left after that is dropped (counted)."""
        log = self.log
        for lane in self.lanes:
            lane.queue.close()
        spooled = [lane for lane in self.lanes if lane.spool is not None]
        reserve = min(3.0, drain_seconds / 4) if spooled else 0.0
        for lane in spooled:
            lane.uploader.stop_replay()
        drained = self._wait_drained(drain_seconds - reserve)
        if not drained and spooled:
            log.info("Shutdown drain: spooling what is still buffered")
            for lane in spooled:
                lane.uploader.divert()
            drained = self._wait_drained(reserve)
        for lane in self.lanes:
            if lane.queue.wait_drained(0.0):
                lane.uploader.join(1.0 if drained else 0.0)
                continue
            in_flight = lane.queue.snapshot()[2]
            settled = lane.uploader.settle_at_shutdown()  # spooled, or counted dropped
            queued = lane.queue.abandon()
            lane.stats.add(SEGMENTS_DROPPED, queued, label="shutdown")
            where = "spooled" if lane.spool is not None else "dropped"
            lane.logs.error(
                "shutdown-dropped",
                f"Shutdown drain time of {drain_seconds:.0f} s ran out: {queued} buffered "
                f"segments dropped, {settled} segments of the batches still waiting or in "
                f"flight ({in_flight} in flight) {where}")
        for lane in spooled:
            assert lane.spool is not None
            lane.spool.sync()


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
