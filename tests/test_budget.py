"""The memory budget: -m, 1 % of memory, the cgroup limit (checklist: bufferpool counts)."""

from __future__ import annotations

import pytest

from xrayd.budget import (
    MIB,
    BudgetError,
    cgroup_memory_limit,
    original_buffer_count,
    resolve_buffer_mb,
)


def test_explicit_setting_wins():
    assert resolve_buffer_mb(64, host_bytes=1 << 40, cgroup_bytes=None) == 64


def test_default_is_one_percent_of_host():
    assert resolve_buffer_mb(0, host_bytes=24 * 1024 * MIB, cgroup_bytes=None) == 245


def test_default_uses_the_smaller_cgroup_limit():
    assert resolve_buffer_mb(0, host_bytes=64 * 1024 * MIB, cgroup_bytes=512 * MIB * 2) == 10
    assert resolve_buffer_mb(-5, host_bytes=400 * MIB, cgroup_bytes=1 << 40) == 4


@pytest.mark.parametrize("setting,host", [(2, 1 << 40), (0, 200 * MIB)])
def test_below_minimum_is_fatal(setting, host):
    with pytest.raises(BudgetError, match=r"Min Buffers Memory required: 3 MB\."):
        resolve_buffer_mb(setting, host_bytes=host, cgroup_bytes=None)


def test_original_buffer_count():
    assert [original_buffer_count(m) for m in (3, 9, 160)] == [48, 144, 2560]


def test_cgroup_v2_and_v1_files(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/xray.service\n")
    v2 = tmp_path / "fs" / "system.slice" / "xray.service"
    v2.mkdir(parents=True)
    (v2 / "memory.max").write_text("268435456\n")
    assert cgroup_memory_limit(str(tmp_path / "fs"), str(proc)) == 256 * MIB
    (v2 / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(str(tmp_path / "fs"), str(proc)) is None
    proc.write_text("5:memory:/docker/abc\n")
    v1 = tmp_path / "fs" / "memory" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(128 * MIB))
    assert cgroup_memory_limit(str(tmp_path / "fs"), str(proc)) == 128 * MIB
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712")
    assert cgroup_memory_limit(str(tmp_path / "fs"), str(proc)) is None
