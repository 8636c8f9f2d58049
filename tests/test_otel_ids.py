import pytest

from xrayd.otel.ids import IdError, otel_span_id, otel_trace_id, xray_span_id, xray_trace_id


def test_trace_id_round_trip():
    raw = bytes.fromhex("5759e988bd862e3fe1be46a994272793")
    assert xray_trace_id(raw) == "1-5759e988-bd862e3fe1be46a994272793"
    assert otel_trace_id("1-5759e988-bd862e3fe1be46a994272793") == raw


def test_span_id_round_trip():
    assert xray_span_id(bytes.fromhex("53995c3f42cd8ad8")) == "53995c3f42cd8ad8"
    assert otel_span_id("53995c3f42cd8ad8") == bytes.fromhex("53995c3f42cd8ad8")


@pytest.mark.parametrize("raw", [b"", b"\x01" * 15, b"\x01" * 17, b"\x00" * 16])
def test_bad_trace_ids(raw):
    with pytest.raises(IdError):
        xray_trace_id(raw)


@pytest.mark.parametrize("raw", [b"", b"\x01" * 7, b"\x01" * 9, b"\x00" * 8])
def test_bad_span_ids(raw):
    with pytest.raises(IdError):
        xray_span_id(raw)


@pytest.mark.parametrize("text", ["", "1-5759e988-bd862e3f", "2-5759e988-bd862e3fe1be46a994272793",
                                  "1-5759E988-bd862e3fe1be46a994272793",
                                  "1-5759e988-bd862e3fe1be46a994272793\n"])
def test_bad_xray_trace_ids(text):
    with pytest.raises(IdError):
        otel_trace_id(text)


@pytest.mark.parametrize("text", ["", "53995c3f42cd8ad", "53995c3f42cd8ad8\n", "g3995c3f42cd8ad8"])
def test_bad_xray_span_ids(text):
    with pytest.raises(IdError):
        otel_span_id(text)
