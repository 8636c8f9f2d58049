"""What /proc says about a process tree (a daemon and any worker processes it starts): CPU
seconds, resident memory, and whether a UDP port is bound. Linux only."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                text = Path(f"/proc/{current}/task/{task}/children").read_text()
                todo.extend(int(c) for c in text.split())
        except OSError:
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process and its live descendants."""
    total = 0
    for each in tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of the process and its live descendants."""
    total = 0
    for each in tree(pid):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def pss_bytes(pid: int) -> int:
    """Proportional set size of the process and its live descendants: pages shared between
    them (a forked helper shares the daemon's) are counted once in all, not once per process."""
    total = 0
    for each in tree(pid):
        try:
            for line in Path(f"/proc/{each}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def udp_port_bound(port: int) -> bool:
    """True when some socket is bound to UDP ``port`` (IPv4 or IPv6)."""
    needle = f":{port:04X} "
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    if needle in line.split(None, 2)[1] + " ":
                        return True
        except (OSError, StopIteration):
            continue
    return False


def udp_receive_errors() -> int:
    """The kernel's system-wide count of UDP datagrams dropped for a full receive buffer."""
    lines = Path("/proc/net/snmp").read_text().splitlines()
    for names, values in itertools.pairwise(lines):
        if names.startswith("Udp:") and values.startswith("Udp:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("RcvbufErrors", 0))
    return 0


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)
