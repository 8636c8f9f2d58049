"""Memory: trimming after a drain (memory.py), and the default mode's light imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import SAFE_ENV, free_port, free_udp_tcp_port
from xrayd import memory

MB = 1024 * 1024


def test_trims_once_the_queue_drained_after_a_burst():
    held = [0]
    calls = []
    trimmer = memory.DrainTrimmer(lambda: held[0], lambda: calls.append(held[0]),
                                  min_bytes=8 * MB, fraction=0.125)
    for value in (0, 1 * MB, 4 * MB, 0):  # small: nothing worth trimming
        held[0] = value
        assert not trimmer.check()
    for value in (30 * MB, 64 * MB, 20 * MB, 9 * MB):  # a burst, draining
        held[0] = value
        assert not trimmer.check()
    held[0] = 2 * MB  # below an eighth of the 64 MB high-water mark
    assert trimmer.check()
    assert calls == [2 * MB]
    held[0] = 1 * MB
    assert not trimmer.check()  # once per burst
    assert trimmer.trims == 1


def test_trim_runs_on_this_libc():
    assert memory.trim() in (True, False)  # callable here; returns whether pages went back


def test_default_mode_loads_no_aiohttp_asyncio_or_endpoint_tables(tmp_path):
    """The proxy and the daemon's start-up, in a fresh interpreter: what got imported/loaded."""
    udp, tcp = free_udp_tcp_port(), free_port()
    script = textwrap.dedent(f"""
        import sys
        from xrayd import config, daemon, flags, logs
        cfg, _ = config.load(None)
        given = flags.parse(["-b", "127.0.0.1:{udp}", "-t", "127.0.0.1:{tcp}", "-n", "eu-west-1"])
        cfg = cfg.replace(**flags.settings_from(given))
        logs.configure(logs.LEVELS_BY_SETTING["prod"], "", cfg.log_rotation)
        d = daemon.Daemon(cfg)
        d.start()
        loader = d.uploader.exporter.aws.session.get_component("data_loader")
        cached = [key[1] for key in getattr(loader, "_cache", {{}}) if len(key) > 1]
        print("endpoint", d.uploader.exporter.aws.endpoint)
        print("modules", sorted(m for m in ("aiohttp", "asyncio") if m in sys.modules))
        print("endpoints-table", "endpoints" in cached)
        d.shutdown.requested.set()
        d.stop(1)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**SAFE_ENV, "PATH": "/usr/bin:/bin"}, cwd=tmp_path,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["endpoint"] == "https://xray.eu-west-1.amazonaws.com"
    assert lines["modules"] == "[]"
    assert lines["endpoints-table"] == "False"



def test_an_idle_helper_ends_itself_and_a_new_one_comes_with_load(monkeypatch):
    """After a burst the upload helper exits (the daemon is one process again); uploads go on
    in-process, and a new helper is forked when calls come often again."""
    import os
    import time

    from conftest import wait_until
    from test_exporter_transport import Endpoint, docs, exporter_for
    from xrayd.exporters import offload, xray

    monkeypatch.setattr(xray, "OFFLOAD_CALLS_PER_SECOND", 3)
    monkeypatch.setattr(xray, "REFORK_SECONDS", 0.0)
    monkeypatch.setattr(offload, "IDLE_EXIT_SECONDS", 0.5)
    upstream = Endpoint()
    exporter = exporter_for(upstream.url, offload=True)

    def burst(tag: str) -> offload.Helper:
        for i in range(20):
            assert exporter.put(docs(1, f"{tag}{i}")) == []
            helper = exporter._helper
            if helper is not None and helper.ready.wait(10):
                return helper
        raise AssertionError("no helper")

    try:
        first = burst("a")
        assert exporter.put(docs(1, "via-helper")) == []
        wait_until(lambda: os.waitpid(first.pid, os.WNOHANG)[0] == first.pid, timeout=10,
                   what="the idle helper's exit")
        time.sleep(0.1)
        assert exporter.put(docs(1, "in-process")) == []  # the ended helper is noticed
        second = burst("b")
        assert second is not first and second.usable
    finally:
        exporter.close()
        upstream.fake.stop()
    assert any('"via-helper-0"' in d for d in upstream.documents)
    assert any('"in-process-0"' in d for d in upstream.documents)
