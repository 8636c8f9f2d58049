"""The admin endpoint (opt-in, ``--admin-address``): liveness, readiness and Prometheus metrics.

Served by a ThreadedHttpServer of its own (server/threaded.py). The metrics come from a custom
collector that reads the daemon's Stats on every scrape, registered in a registry of its own (no
global prometheus state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from xrayd import stats as names
from xrayd.server.threaded import Handler, Request, Response, ThreadedHttpServer, plain
from xrayd.stats import Stats

Depth = tuple[int, int, int]


@dataclass
class Sources:
    """What the admin endpoint reads; callables so it always sees the current state."""

    stats: Stats
    intake_open: Callable[[], bool]
    backend_ready: Callable[[], tuple[bool, str]]  # (ready, why not)
    queue_depth: Callable[[], Depth] | None = None  # (bytes, documents queued, batches in flight)
    spool_depth: Callable[[], Depth] | None = None  # (documents, bytes, files)
    upload_rate_limit: Callable[[], float | None] | None = None


# Counters of Stats: (stats name, metric name, label name, help).
COUNTERS = (
    (names.SEGMENTS_SENT, "xrayd_segments_sent", "", "Segments accepted by the X-Ray API."),
    (names.SEGMENTS_SPILLED, "xrayd_segments_spilled", "kind",
     "Segments let go because the memory budget was full (evicted_oldest, dropped_new)."),
    (names.SEGMENTS_RETRIED, "xrayd_segments_retried", "",
     "Segments sent again after a failed call or a transient unprocessed answer."),
    (names.SEGMENTS_SPOOLED, "xrayd_segments_spooled", "", "Segments written to the spool."),
    (names.SEGMENTS_REPLAYED, "xrayd_segments_replayed", "",
     "Segments taken back out of the spool for upload."),
    (names.SPOOL_RECOVERED, "xrayd_spool_recovered_segments", "",
     "Segments found in the spool at start-up."),
    (names.SEGMENTS_UNPROCESSED, "xrayd_segments_unprocessed", "code",
     "Segments the X-Ray API refused (UnprocessedTraceSegments), by error code; final."),
    (names.SEGMENTS_FAILED, "xrayd_segments_failed", "class",
     "Segments dropped because their batch could not be delivered, by error class."),
    (names.SEGMENTS_DROPPED, "xrayd_segments_dropped", "reason",
     "Segments dropped for another reason (shutdown, spool_full, spool_damaged)."),
    (names.BATCHES_SENT, "xrayd_batches_sent", "", "Successful PutTraceSegments calls."),
    (names.BATCHES_RETRIED, "xrayd_batches_retried", "", "PutTraceSegments calls retried."),
    (names.UPLOAD_ERRORS, "xrayd_backend_errors", "class",
     "Failed X-Ray API calls, by class (timeout, connection_refused, unknown_host, http_4xx, "
     "http_5xx, no_credentials, other)."),
    (names.PROXY_REQUESTS, "xrayd_proxy_requests", "status",
     "Requests answered by the sampling proxy, by HTTP status."),
)


class StatsCollector:
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        stats = src.stats
        received = CounterMetricFamily("xrayd_datagrams_received", "UDP datagrams received.")
        received.add_metric([], stats.received)
        yield received
        accepted = CounterMetricFamily("xrayd_segments_accepted",
                                       "Valid segment documents taken in from UDP.")
        accepted.add_metric([], stats.accepted)
        yield accepted
        rejected = CounterMetricFamily("xrayd_datagrams_rejected",
                                       "UDP datagrams rejected, by reason.", labels=["reason"])
        for reason, count in sorted(stats.rejected().items()):
            rejected.add_metric([reason.value], count)
        yield rejected
        for name, metric, label, help_text in COUNTERS:
            family = CounterMetricFamily(metric, help_text, labels=[label] if label else None)
            values = stats.by_label(name)
            if label:
                for value, count in sorted(values.items()):
                    family.add_metric([value or "unknown"], count)
            else:
                family.add_metric([], sum(values.values()))
            yield family
        yield self._latency()
        yield from self._gauges()

    def _latency(self) -> Metric:
        histogram = self.sources.stats.upload_latency
        counts, total = histogram.snapshot()
        buckets = []
        running = 0
        for bound, count in zip((*histogram.bounds, float("inf")), counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        family = HistogramMetricFamily(
            "xrayd_upload_duration_seconds", "Duration of successful PutTraceSegments calls.")
        family.add_metric([], buckets, total)
        return family

    def _gauges(self) -> Iterator[Metric]:
        src = self.sources

        def gauge(name: str, help_text: str, value: float) -> Metric:
            family = GaugeMetricFamily(name, help_text)
            family.add_metric([], value)
            return family

        if src.queue_depth is not None:
            held, queued, in_flight = src.queue_depth()
            yield gauge("xrayd_queue_segments", "Segments buffered in memory, not yet sent.",
                        queued)
            yield gauge("xrayd_queue_bytes", "Bytes of the memory budget in use.", held)
            yield gauge("xrayd_batches_in_flight", "Batches being uploaded.", in_flight)
        if src.spool_depth is not None:
            docs, size, files = src.spool_depth()
            yield gauge("xrayd_spool_segments", "Segments held in the spool.", docs)
            yield gauge("xrayd_spool_bytes", "Bytes held in the spool.", size)
            yield gauge("xrayd_spool_files", "Files (batches) held in the spool.", files)
        if src.upload_rate_limit is not None:
            rate = src.upload_rate_limit()
            yield gauge("xrayd_upload_rate_limit",
                        "Upload calls per second allowed after throttling; 0 = no limit.",
                        rate or 0.0)
        ready, _ = src.backend_ready()
        yield gauge("xrayd_backend_up", "1 when the X-Ray API answered recently.", int(ready))
        yield gauge("xrayd_intake_open", "1 while the daemon takes in segments.",
                    int(src.intake_open()))


def make_handler(sources: Sources) -> Handler:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(sources))  # type: ignore[arg-type]

    def healthz() -> Response:
        return plain(200, "ok\n")

    def readyz() -> Response:
        if not sources.intake_open():
            return plain(503, "not ready: intake closed (shutting down)\n")
        ready, why = sources.backend_ready()
        if not ready:
            return plain(503, f"not ready: {why}\n")
        return plain(200, "ready\n")

    def metrics() -> Response:
        return Response(200, generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    routes = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}

    def handle(request: Request) -> Response:
        route = routes.get(request.path)
        if route is None:
            return plain(404, "404: Not Found")
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"405: Method Not Allowed", [("Allow", "GET,HEAD")],
                            content_type="text/plain; charset=utf-8")
        return route()

    return handle


def make_server(address: str, sources: Sources, allowed_hosts: str = "") -> ThreadedHttpServer:
    """GET only, so no content-type rule; Host and Origin are checked as for the API."""
    from xrayd.server.policy import read_only_policy

    return ThreadedHttpServer(address, make_handler(sources), max_body=1024, name="admin-http",
                              policy=read_only_policy(address, allowed_hosts).check)
