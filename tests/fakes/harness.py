"""Helpers shared by the fault tests and the reliability benchmarks: numbered segment datagrams
sent at a steady rate, and a scrape of the daemon's /metrics."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request

HEADER = b'{"format":"json","version":1}\n'
_SEQ = re.compile(rb'"id":"([0-9a-f]{16})"')
PAD = "x" * 700  # about 1 KB per document, like a typical segment


def trace_of(n: int, run: str = "0") -> str:
    """Segments are grouped 100 to a trace."""
    return f"1-6553f100-{run:0>8}{n // 100:016x}"


def segment(n: int, run: str = "0") -> bytes:
    start = 1_700_000_000 + n / 1000
    doc = {"trace_id": trace_of(n, run), "id": f"{n:016x}",
           "name": "reliability", "start_time": start, "end_time": start + 0.001,
           "annotations": {"pad": PAD}}
    return HEADER + json.dumps(doc, separators=(",", ":")).encode()


def sequence_number(document: bytes) -> int:
    found = _SEQ.search(document)
    return int(found.group(1), 16) if found else -1


def send_at_rate(port: int, first: int, count: int, rate: float, run: str = "0",
                 stop=None) -> int:
    """Send segments first..first+count-1 at ``rate`` per second; the number sent."""
    sent = 0
    tick = 0.01
    per_tick = max(1, int(rate * tick))
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while sent < count:
            if stop is not None and stop.is_set():
                break
            for _ in range(min(per_tick, count - sent)):
                sock.sendto(segment(first + sent, run), ("127.0.0.1", port))
                sent += 1
            ahead = started + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return sent


def scrape(admin_url: str) -> dict[str, float]:
    """Every sample of /metrics by ``name{label="value"}`` (or bare name)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def total(samples: dict[str, float], name: str) -> float:
    """A counter summed over its labels."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def outcome_totals(samples: dict[str, float]) -> dict[str, float]:
    names = ("sent", "unprocessed", "failed", "spilled", "dropped")
    counts = {n: total(samples, f"xrayd_segments_{n}_total") for n in names}
    counts["accepted"] = total(samples, "xrayd_segments_accepted_total")
    counts["queued"] = samples.get("xrayd_queue_segments", 0.0)
    counts["in_flight_batches"] = samples.get("xrayd_batches_in_flight", 0.0)
    counts["spooled_now"] = samples.get("xrayd_spool_segments", 0.0)
    counts["recovered"] = total(samples, "xrayd_spool_recovered_segments_total")
    return counts
