"""The admin endpoint (opt-in, ``--admin-address``): liveness, readiness and Prometheus metrics.

Served by a ThreadedHttpServer of its own (server/threaded.py). The metrics come from a custom
collector that reads the daemon's Stats on every scrape, registered in a registry of its own (no
global prometheus state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from xrayd.fanout import Lane

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
    lanes: Callable[[], Sequence[Lane]] | None = None  # every exporter's lane (fanout.py)


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
    (names.OTEL_SPANS_RECEIVED, "xrayd_otel_spans_received", "source",
     "OpenTelemetry spans received, by source (otlp-udp, otlp-http, otlp-grpc)."),
    (names.OTEL_SPANS_REJECTED, "xrayd_otel_spans_rejected", "source_reason",
     "OpenTelemetry spans that could not become segments, as source:reason."),
    (names.OTEL_SPANS_UNSAMPLED, "xrayd_otel_spans_unsampled", "source",
     "Unsampled OpenTelemetry spans (T1U datagrams): counted, not sent."),
    (names.OTEL_REQUESTS_REJECTED, "xrayd_otel_requests_rejected", "source_reason",
     "OTLP requests or payloads refused whole, as source:reason (bad_protobuf, busy, ...)."),
    (names.OTEL_METRICS, "xrayd_otel_metrics_payloads", "outcome",
     "OTLP metrics payloads (M1 datagrams): forwarded or dropped_no_exporter."),
)


# Per-exporter counters (fanout.LaneStats names): (metric name, label name, help).
EXPORTER_COUNTERS = {
    names.SEGMENTS_SENT: ("xrayd_exporter_segments_sent", "label",
                          "Segments the exporter's destination accepted."),
    names.SEGMENTS_FAILED: ("xrayd_exporter_segments_failed", "class",
                            "Segments dropped because their batch could not be delivered."),
    names.SEGMENTS_UNPROCESSED: ("xrayd_exporter_segments_unprocessed", "code",
                                 "Segments the destination refused, by error code."),
    names.SEGMENTS_SPILLED: ("xrayd_exporter_segments_spilled", "kind",
                             "Segments let go because the exporter's share of the memory "
                             "budget was full."),
    names.SEGMENTS_DROPPED: ("xrayd_exporter_segments_dropped", "reason",
                             "Segments dropped for another reason (shutdown, spool_full, ...)."),
    names.SEGMENTS_SPOOLED: ("xrayd_exporter_segments_spooled", "label",
                             "Segments written to the exporter's spool."),
    names.SEGMENTS_REPLAYED: ("xrayd_exporter_segments_replayed", "label",
                              "Segments taken back out of the exporter's spool."),
    names.SEGMENTS_RETRIED: ("xrayd_exporter_segments_retried", "label",
                             "Segments sent again after a failed call."),
    names.BATCHES_SENT: ("xrayd_exporter_batches_sent", "label", "Successful calls."),
    names.BATCHES_RETRIED: ("xrayd_exporter_batches_retried", "label", "Calls retried."),
    names.UPLOAD_ERRORS: ("xrayd_exporter_errors", "class", "Failed calls, by class."),
    "otlp_spans_converted": ("xrayd_otlp_spans_converted", "label",
                             "Spans made from X-Ray segment documents for OTLP export."),
    "otlp_fields_skipped": ("xrayd_otlp_fields_skipped", "reason",
                            "Segment fields left out of the spans because they did not convert."),
    "otlp_documents_unconverted": ("xrayd_otlp_documents_unconverted", "reason",
                                   "Segment documents that gave no span (no usable ids)."),
    "otlp_spans_rejected": ("xrayd_otlp_spans_rejected", "label",
                            "Spans the OTLP receiver refused in a partial success."),
    "otlp_requests_split": ("xrayd_otlp_requests_split", "label",
                            "OTLP requests the receiver found too large (413), sent again in "
                            "halves."),
    "otlp_metrics_forwarded": ("xrayd_otlp_metrics_forwarded", "label",
                               "OTLP metrics requests forwarded to /v1/metrics."),
    "otlp_metrics_failed": ("xrayd_otlp_metrics_failed", "class",
                            "OTLP metrics requests that could not be forwarded."),
    "otlp_metrics_dropped": ("xrayd_otlp_metrics_dropped", "reason",
                             "OTLP metrics requests not forwarded (no endpoint, queue full)."),
}


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
        intake = CounterMetricFamily(
            "xrayd_intake_segments", "Segment documents taken in, by source (xray: X-Ray "
            "datagrams; otlp-udp, otlp-http, otlp-grpc: converted OpenTelemetry spans).",
            labels=["source"])
        for source, count in stats.intake_by_source().items():
            intake.add_metric([source], count)
        yield intake
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
        if src.lanes is not None:
            yield from self._exporters(src.lanes())

    @staticmethod
    def _exporter_counter(name: str) -> tuple[str, str, str]:
        return EXPORTER_COUNTERS.get(
            name, (f"xrayd_exporter_{name}", "label", name.replace("_", " ") + "."))

    def _exporters(self, lanes: Sequence[Lane]) -> Iterator[Metric]:
        """Every lane's counters and gauges, labelled with its exporter (xray, local, otlp)."""
        values: dict[str, dict[tuple[str, ...], int]] = {}
        for lane in lanes:
            for (name, label), count in lane.stats.snapshot().items():
                metric, label_name, _ = self._exporter_counter(name)
                key = (lane.name,) if label_name == "label" else (lane.name, label or "unknown")
                series = values.setdefault(name, {})
                series[key] = series.get(key, 0) + count
        for name, series in sorted(values.items()):
            metric, label_name, help_text = self._exporter_counter(name)
            labels = ["exporter"] if label_name == "label" else ["exporter", label_name]
            family = CounterMetricFamily(metric, help_text, labels=labels)
            for key, count in sorted(series.items()):
                family.add_metric(list(key), count)
            yield family
        gauges = {
            "xrayd_exporter_queue_segments": "Segments buffered in memory for the exporter.",
            "xrayd_exporter_queue_bytes": "Bytes of the exporter's share of the budget in use.",
            "xrayd_exporter_spool_segments": "Segments in the exporter's spool.",
            "xrayd_exporter_up": "1 when the exporter's destination answered recently.",
        }
        made = {name: GaugeMetricFamily(name, text, labels=["exporter"])
                for name, text in gauges.items()}
        for lane in lanes:
            held, queued, _ = lane.queue.snapshot()
            made["xrayd_exporter_queue_segments"].add_metric([lane.name], queued)
            made["xrayd_exporter_queue_bytes"].add_metric([lane.name], held)
            spooled = lane.spool.depth()[0] if lane.spool is not None else 0
            made["xrayd_exporter_spool_segments"].add_metric([lane.name], spooled)
            made["xrayd_exporter_up"].add_metric([lane.name],
                                                 int(not lane.uploader.breaker.is_open))
        yield from made.values()

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
