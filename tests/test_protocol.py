"""Datagram parsing (checklist: tracesegment, util) and the bad inputs of the issue."""

from __future__ import annotations

import pytest

from xrayd.protocol import HeaderCache, Reason, check_header, classify, document_ids


@pytest.mark.parametrize("header", [
    b'{"format":"json","version":1}',
    b'{"format": "json", "version": 1}',
    b'{"format":"jSoN","version":1}',
    b'{"FORMAT":"json","Version":1}',
    b'{"version":1,"format":"JSON","extra":[1,2]}',
    b'{"format":"json","version":1}\r',
    b'  {"format" : "json" , "version" : 1 }  ',
])
def test_valid_headers(header):
    assert check_header(header) is None


@pytest.mark.parametrize("header,reason", [
    (b'{"format":"json","version":2}', Reason.BAD_VERSION),
    (b'{"format":"xml","version":1}', Reason.BAD_FORMAT),
    (b'{"format":"xml","version":2}', Reason.BAD_FORMAT),
    (b'{"format":"json","version":"1"}', Reason.BAD_VERSION),
    (b'{"format":"json","version":1.0}', Reason.BAD_VERSION),
    (b'{"format":"json","version":1e0}', Reason.BAD_VERSION),
    (b'{"format":"json","version":true}', Reason.BAD_VERSION),
    (b'{"format":"json"}', Reason.BAD_VERSION),
    (b'{"format":1,"version":1}', Reason.BAD_FORMAT),
    (b'{"format":"json","version":1} trailing', Reason.HEADER_NOT_JSON),
    (b'["format","json"]', Reason.HEADER_NOT_JSON),
    (b"not json", Reason.HEADER_NOT_JSON),
    (b"\xff\xfe", Reason.HEADER_NOT_JSON),
    (b"", Reason.HEADER_NOT_JSON),
])
def test_invalid_headers(header, reason):
    assert check_header(header) == reason


def test_split_at_first_newline_and_body_kept_byte_for_byte():
    cache = HeaderCache()
    body = b'{"id":"a"}\n{"second":"line"}\n'
    data = b'{"format":"json","version":1}\n' + body
    assert classify(data, cache) == (body, None)


@pytest.mark.parametrize("data,reason", [
    (b"", Reason.EMPTY),
    (b"Header", Reason.NO_SEPARATOR),
    (b'{"format":"json","version":1}', Reason.NO_SEPARATOR),
    (b'{"format":"json","version":1}\n', Reason.EMPTY_BODY),
    (b'{"format":"json","version":2}\n{}', Reason.BAD_VERSION),
    (b'{"format":"json","version":1}\n{"a":"\xff\xfe"}', Reason.NOT_UTF8),
    (b'{"format":"json","version":1}\nT1SAAAA', Reason.OTLP_BODY),
    (b'{"format":"json","version":1}\nM1AAAA', Reason.OTLP_BODY),
])
def test_rejected_datagrams(data, reason):
    assert classify(data, HeaderCache()) == (None, reason)


def test_non_ascii_utf8_body_is_accepted():
    body = '{"name":"café ☕"}'.encode()
    assert classify(b'{"format":"json","version":1}\n' + body, HeaderCache()) == (body, None)


def test_largest_datagram_is_accepted():
    header = b'{"format":"json","version":1}\n'
    body = b'{"m":"' + b"x" * (65507 - len(header) - 8) + b'"}'
    data = header + body
    assert len(data) == 65507
    assert classify(data, HeaderCache()) == (body, None)


def test_header_cache_is_bounded_and_consistent():
    cache = HeaderCache(capacity=4)
    for i in range(20):
        header = b'{"format":"json","version":%d}' % i
        assert cache.check(header) == (None if i == 1 else Reason.BAD_VERSION)
    assert len(cache._verdicts) == 4


def test_document_ids_from_json_and_from_unparseable_text():
    assert document_ids(b'{"trace_id":"1-a-b","id":"0123456789abcdef","subsegments":'
                        b'[{"id":"ffffffffffffffff"}]}') == ("0123456789abcdef", "1-a-b")
    assert document_ids(b'{"id": "0123", "trace_id" : "1-x", broken') == ("0123", "1-x")
    assert document_ids(b"garbage") == ("", "")
