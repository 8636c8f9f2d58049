"""OTLP/gRPC trace receiver: ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` on
grpcio, with the same limits and answers as OTLP/HTTP (INVALID_ARGUMENT for undecodable
requests, UNAVAILABLE when the memory budget is full, partial success for rejected spans)."""

from __future__ import annotations

import os
from concurrent import futures
from typing import Any

# grpcio's fork handlers re-create its threads in a forked child; the X-Ray exporter's upload
# helper (exporters/offload.py) is forked and closes every inherited descriptor, under which
# those threads failed ("epoll_wait error: Bad file descriptor") and the helper with them.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc

from xrayd.otel.decode import MAX_BODY, DecodeError
from xrayd.receivers.otlp_intake import Count, OtlpIntake
from xrayd.receivers.udp import split_address
from xrayd.stats import OTEL_REQUESTS_REJECTED

SOURCE = "otlp-grpc"
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
WORKERS = 4


class OtlpGrpcReceiver:
    def __init__(self, address: str, intake: OtlpIntake, count: Count,
                 max_message: int = MAX_BODY, workers: int = WORKERS) -> None:
        self.address = address
        self.intake = intake
        self.count = count
        self.bound: tuple[str, int] | None = None
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otlp-grpc"),
            maximum_concurrent_rpcs=workers * 8,  # each may hold a 20 MiB message
            options=[
                # Checked by grpc against the decompressed size of each message.
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", 1024 * 1024),
                # Without this a port another process holds would be shared, not refused.
                ("grpc.so_reuseport", 0),
            ],
        )
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Export": grpc.unary_unary_rpc_method_handler(self._export),  # raw bytes both ways
        })
        self._server.add_generic_rpc_handlers((handler,))

    def start(self) -> None:
        """Listen; OSError when the address cannot be bound."""
        host, port = split_address(self.address)
        target = f"[{host}]:{port}" if ":" in host else f"{host or '0.0.0.0'}:{port}"
        try:
            bound = self._server.add_insecure_port(target)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.address}: {exc}") from None
        if not bound:
            raise OSError(f"cannot listen on {self.address}: address in use or not available")
        self.bound = (host or "0.0.0.0", bound)
        self._server.start()

    def stop(self, grace: float = 2.0) -> None:
        self._server.stop(grace).wait(grace + 1)

    def _export(self, data: bytes, context: Any) -> bytes:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        gate = self.intake.gate
        if not gate.reserve(len(data)):
            self.count(OTEL_REQUESTS_REJECTED, f"{SOURCE}:busy", 1)
            self.intake.logs.warn(f"otel-busy:{SOURCE}", "OTLP/gRPC request bytes in flight at "
                                                         "their bound: asked the sender to "
                                                         "retry later")
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "too many request bytes in flight, retry later")
        try:
            outcome = self.intake.body(data, SOURCE, self.count)
        except Exception as exc:  # DecodeError, or a bug: never an internal error answer
            reason = exc.reason if isinstance(exc, DecodeError) else "internal_error"
            message = str(exc) if isinstance(exc, DecodeError) else \
                f"the request could not be taken ({type(exc).__name__})"
            self.count(OTEL_REQUESTS_REJECTED, f"{SOURCE}:{reason}", 1)
            self.intake.rejected(SOURCE, reason, message, data)
            self.intake.logs.warn(f"otlp-grpc:{reason}",
                                  f"Rejected an OTLP/gRPC request: {message}")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        finally:
            gate.release(len(data))
        if outcome.too_large:  # not a status the SDKs retry: the request would never fit
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, outcome.message)
        if outcome.busy:
            context.abort(grpc.StatusCode.UNAVAILABLE, "memory budget full, retry later")
        response = ExportTraceServiceResponse()
        if outcome.rejected:
            response.partial_success.rejected_spans = outcome.rejected
            response.partial_success.error_message = outcome.message
        return response.SerializeToString()
