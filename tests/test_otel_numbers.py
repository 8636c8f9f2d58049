"""Integers read from text that came from outside (segment fields, span attributes, the
Retry-After header): Unicode digits that ``str.isdigit`` accepts and ``int`` refuses, and digit
strings past Python's conversion limit, are unreadable values, never exceptions."""

from __future__ import annotations

import json

import pytest

from test_otel_convert import convert, span
from xrayd.delivery import retry_after_seconds
from xrayd.numbers import parse_uint
from xrayd.otel.segments_to_spans import Report
from xrayd.otel.segments_to_spans import convert as segment_to_spans

ODD = ["\u00b2", "1\u00b2", "\u0663", "9" * 5000]  # superscript two, Arabic-Indic three, huge


@pytest.mark.parametrize("text, value", [
    ("0", 0), (" 42 ", 42), ("9" * 19, int("9" * 19)), ("", None), ("-1", None),
    ("1.5", None), ("0x10", None), *((odd, None) for odd in ODD),
])
def test_parse_uint_reads_ascii_digits_only(text, value):
    assert parse_uint(text) == value


@pytest.mark.parametrize("header", ODD)
def test_retry_after_with_odd_digits_is_unreadable(header):
    assert retry_after_seconds(header) is None


@pytest.mark.parametrize("odd", ODD)
def test_segment_with_odd_content_length_still_converts(odd):
    doc = {"trace_id": "1-5759e988-bd862e3fe1be46a994272793", "id": "53995c3f42cd8ad8",
           "name": "shop", "start_time": 1765000000.0, "end_time": 1765000001.0,
           "http": {"response": {"status": 200, "content_length": odd}}}
    result = segment_to_spans(json.dumps(doc).encode(), Report())
    assert result is not None
    assert len(result.scope_spans[0].spans) == 1


@pytest.mark.parametrize("odd", ODD)
def test_span_with_odd_status_code_still_converts(odd):
    [doc] = convert(span(attrs={"http.status_code": odd, "http.response_content_length": odd,
                                "http.method": "GET"}))
    assert "status" not in doc.get("http", {}).get("response", {})


def test_a_span_the_conversion_fails_on_is_rejected_with_a_reason(monkeypatch):
    from test_otel_convert import request
    from xrayd.otel import spans_to_segments as s2s

    real = s2s.span_document

    def buggy(span, *args):
        if span.name == "buggy":
            raise ValueError("a conversion bug")
        return real(span, *args)

    monkeypatch.setattr(s2s, "span_document", buggy)
    out = s2s.convert_request(request(span(name="buggy"), span(name="fine", span_id=b"\3" * 8)))
    assert out.spans == 2 and len(out.documents) == 1
    assert out.rejected == {"conversion_failed": 1}
    assert "buggy" in out.messages[0] and "a conversion bug" in out.messages[0]
