"""OTLP payload decoding: gzip bounded while inflating, protobuf, OTLP/JSON, base64."""

from __future__ import annotations

import base64
import gzip
import zlib

import pytest

from xrayd.otel.decode import (
    DecodeError,
    TooLarge,
    from_base64,
    gunzip,
    traces_from_json,
    traces_from_protobuf,
)
from xrayd.protocol import METRICS, SAMPLED_SPANS, UNSAMPLED_SPANS, otlp_payload


def test_gunzip_round_trip_and_limit():
    data = b"x" * 100_000
    assert gunzip(gzip.compress(data), limit=100_000) == data
    with pytest.raises(TooLarge):
        gunzip(gzip.compress(data), limit=99_999)


def test_gzip_bomb_stops_at_the_limit_without_inflating_it_all():
    # 256 MiB of zeros compress to about 256 KiB; inflating must stop near the 1 MiB limit.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1024 * 1024)
    bomb = b"".join(compressor.compress(chunk) for _ in range(256)) + compressor.flush()
    assert len(bomb) < 1024 * 1024
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(TooLarge):
        gunzip(bomb, limit=1024 * 1024)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


@pytest.mark.parametrize("body", [b"not gzip at all", gzip.compress(b"abc" * 100)[:-12]])
def test_bad_or_truncated_gzip(body):
    with pytest.raises(DecodeError) as info:
        gunzip(body)
    assert info.value.reason == "bad_gzip"


def test_garbage_protobuf():
    with pytest.raises(DecodeError) as info:
        traces_from_protobuf(b"\xff\xff\xff\xff garbage")
    assert info.value.reason == "bad_protobuf"


def test_otlp_json_ids_are_hex():
    body = (b'{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":'
            b'{"stringValue":"shop"}}]},"scopeSpans":[{"spans":[{"traceId":'
            b'"6b12e7b695d23dc8d904c0be5d3e6eae","spanId":"1111111111111111","name":"op",'
            b'"kind":2,"startTimeUnixNano":"1765000000000000000","endTimeUnixNano":'
            b'"1765000001000000000","unknownField":1}]}]}]}')
    request = traces_from_json(body)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == "6b12e7b695d23dc8d904c0be5d3e6eae"
    assert span.span_id.hex() == "1111111111111111" and span.kind == 2


@pytest.mark.parametrize("body", [b"[1]", b"{", b'{"resourceSpans":[{"scopeSpans":[{"spans":'
                                  b'[{"traceId":"zz"}]}]}]}', b'{"resourceSpans":7}'])
def test_bad_otlp_json(body):
    with pytest.raises(DecodeError) as info:
        traces_from_json(body)
    assert info.value.reason == "bad_json"


def test_udp_prefixes_and_base64():
    assert otlp_payload(b"T1SAAAA") == (SAMPLED_SPANS, b"AAAA")
    assert otlp_payload(b"T1UAAAA") == (UNSAMPLED_SPANS, b"AAAA")
    assert otlp_payload(b"M1AAAA") == (METRICS, b"AAAA")
    assert otlp_payload(b'{"id":1}') is None
    assert from_base64(base64.b64encode(b"\x00\x01")) == b"\x00\x01"
    for bad in (b"QUJD\n", b"QUJ", b"Q!==", base64.b64encode(b"abcdef")[:-1]):
        with pytest.raises(DecodeError) as info:
            from_base64(bad)
        assert info.value.reason == "bad_base64"


def test_resource_spans_are_cut_out_of_joined_requests_unchanged():
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from xrayd.otel.decode import resource_spans_of

    first, second = ExportTraceServiceRequest(), ExportTraceServiceRequest()
    for request, names in ((first, ["a", "b"]), (second, ["c"])):
        for name in names:
            rs = request.resource_spans.add()
            rs.resource.attributes.add(key="service.name").value.string_value = name
            rs.scope_spans.add().spans.add(name=name, span_id=b"\1" * 8, trace_id=b"\2" * 16)
    joined = first.SerializeToString() + second.SerializeToString()
    assert resource_spans_of(joined) == [rs.SerializeToString() for rs in
                                         [*first.resource_spans, *second.resource_spans]]
    with pytest.raises(DecodeError):
        resource_spans_of(joined[:-3])
