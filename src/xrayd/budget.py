"""The memory budget for buffered segments: -m / TotalBufferSizeMB.

The default is 1 % of the memory the daemon may use: the host's physical memory, or the cgroup
(container) limit when that is smaller (the original looks at the host only).
"""

from __future__ import annotations

import os

MIB = 1024 * 1024
MIN_BUFFER_MB = 3
# What the original's buffer count was derived from: one 64 KiB buffer per segment.
ORIGINAL_BUFFER_BYTES = 64 * 1024


class BudgetError(Exception):
    pass


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _read_limit(path: str) -> int | None:
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # "max": no limit
    value = int(text)
    return value if value < 2**60 else None  # cgroup v1 writes a huge number for "no limit"


def cgroup_memory_limit(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> (
    int | None
):
    """The smallest memory limit of this process's cgroup (v2 or v1), or None if unlimited."""
    relative = "/"
    try:
        with open(proc_cgroup) as handle:
            for line in handle:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3 and (parts[0] == "0" or "memory" in parts[1].split(",")):
                    relative = parts[2] or "/"
                    break
    except OSError:
        pass
    candidates = [
        os.path.join(root, relative.lstrip("/"), "memory.max"),
        os.path.join(root, "memory.max"),
        os.path.join(root, "memory", relative.lstrip("/"), "memory.limit_in_bytes"),
        os.path.join(root, "memory", "memory.limit_in_bytes"),
    ]
    limits = [limit for limit in map(_read_limit, candidates) if limit is not None]
    return min(limits) if limits else None


def resolve_buffer_mb(setting: int, host_bytes: int, cgroup_bytes: int | None) -> int:
    """The budget in MB: the setting when positive, else 1 % of the usable memory."""
    if setting > 0:
        megabytes = setting
    else:
        usable = min(host_bytes, cgroup_bytes) if cgroup_bytes else host_bytes
        megabytes = usable // 100 // MIB
    if megabytes < MIN_BUFFER_MB:
        raise BudgetError(
            f"Not enough Buffers Memory Allocated. Min Buffers Memory required: {MIN_BUFFER_MB} MB."
        )
    return megabytes


def original_buffer_count(megabytes: int) -> int:
    """How many 64 KiB buffers the original would allocate (a lower bound of what fits here)."""
    return megabytes * MIB // ORIGINAL_BUFFER_BYTES
