"""The log format, levels, rotation and rate limiting (checklist: logger)."""

from __future__ import annotations

import io
import logging
import re

import pytest

from xrayd import logs

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d) \[(\w+)\] (.*)$")


@pytest.fixture
def stream():
    out = io.StringIO()
    logs.configure(logs.level_for("dev"), stream=out)
    yield out
    logs.configure(logging.INFO, stream=io.StringIO())


def test_every_level_in_the_original_format(stream):
    log = logs.get_logger()
    log.log(logs.TRACE, "t %d", 1)
    log.debug("d")
    log.info("i %s", "x")
    log.warning("w")
    log.error("e")
    log.critical("c")
    lines = stream.getvalue().splitlines()
    parsed = [LINE.match(line).group(2, 3) for line in lines]
    assert parsed == [("Trace", "t 1"), ("Debug", "d"), ("Info", "i x"), ("Warn", "w"),
                      ("Error", "e"), ("Critical", "c")]


def test_time_format_utc_and_offset(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()
    assert logs.format_time(0) == "1970-01-01T00:00:00Z"
    monkeypatch.setenv("TZ", "EET-3")
    time.tzset()
    assert logs.format_time(0) == "1970-01-01T03:00:00+03:00"
    monkeypatch.delenv("TZ")
    time.tzset()


@pytest.mark.parametrize("setting,level", [("dev", logs.TRACE), ("debug", logging.DEBUG),
                                           ("info", logging.INFO), ("warn", logging.WARNING),
                                           ("error", logging.ERROR), ("prod", logging.INFO),
                                           ("bogus", None)])
def test_levels(setting, level):
    assert logs.level_for(setting) == level


def test_prod_hides_debug(stream):
    logs.configure(logs.level_for("prod"), stream=stream)
    logs.get_logger().debug("hidden")
    logs.get_logger().info("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()


def test_rotation_keeps_one_rolled_file(tmp_path):
    path = tmp_path / "xray.log"
    path.write_text("x" * 150)  # pre-existing content counts
    target = logs.RotatingFile(str(path), rotate=True, limit=100)
    target.write("first\n")
    assert (tmp_path / "xray.log.1").read_text() == "x" * 150
    assert path.read_text() == "first\n"
    target.write("y" * 100 + "\n")
    target.write("third\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xray.log", "xray.log.2"]
    assert path.read_text() == "third\n"
    target.close()


def test_no_rotation_appends(tmp_path):
    path = tmp_path / "sub" / "xray.log"
    target = logs.RotatingFile(str(path), rotate=False, limit=10)
    for _ in range(5):
        target.write("0123456789\n")
    target.close()
    assert path.read_text() == "0123456789\n" * 5
    assert [p.name for p in path.parent.iterdir()] == ["xray.log"]


def test_rate_limited_log_counts_what_it_held_back(stream):
    now = [0.0]
    limited = logs.RateLimitedLog(logs.get_logger(), interval=10, clock=lambda: now[0])
    assert limited.warn("k", "bad datagram")
    for _ in range(5):
        assert not limited.warn("k", "bad datagram")
    assert limited.warn("other", "another key")
    now[0] = 10.0
    assert limited.warn("k", "bad datagram")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[2].endswith("bad datagram (5 similar messages suppressed)")


def test_rate_limited_burst(stream):
    limited = logs.RateLimitedLog(logs.get_logger(), interval=10, burst=3, clock=lambda: 0.0)
    assert [limited.error("k", f"m{i}") for i in range(5)] == [True] * 3 + [False] * 2


def test_early_error_goes_to_stderr_and_file(tmp_path, capsys):
    log = tmp_path / "early.log"
    logs.write_early_error("boom", str(log))
    assert LINE.match(capsys.readouterr().err.strip()).group(2, 3) == ("Error", "boom")
    assert "[Error] boom" in log.read_text()


def test_rotation_ignores_files_whose_suffix_only_looks_like_a_number(tmp_path):
    path = tmp_path / "xray.log"
    path.write_text("x" * 150)
    (tmp_path / "xray.log.²").write_text("not ours")  # str.isdigit() is true, int() fails
    target = logs.RotatingFile(str(path), rotate=True, limit=100)
    target.write("first\n")
    assert (tmp_path / "xray.log.1").read_text() == "x" * 150
    assert (tmp_path / "xray.log.²").read_text() == "not ours"
    target.close()
