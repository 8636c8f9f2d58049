"""Trace viewer benchmark in headless Debian chromium (playwright): how long a trace of 5,000
segments and subsegments takes from clicking its link to its timeline on screen, and how
smoothly a list of 10,000 traces scrolls.

    .venv/bin/python bench/bench_viewer.py [--rows 5000] [--traces 10000] [--runs 5]

``xrayd --offline`` runs as a subprocess; documents go in through its PutTraceSegments. The
timeline time is measured in the page, from the route change to the first animation frame
after the rows are in the page (the BatchGetTraces call and the JSON of 5,000 entities
included). The list is paged in through the viewer's own "Load more" (100 traces a page, as
X-Ray's GetTraceSummaries), then scrolled top to bottom by 3 rows per animation frame; frame
intervals above 16.7 ms are frames a 60 Hz screen would drop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from conftest import Xrayd, free_udp_tcp_port, wait_until
from offline_support import xray_client
from test_viewer_browser import LAUNCH_FLAGS, ensure_chromium
from viewer_support import big_trace, new_id, new_trace_id

TIMELINE_JS = """async (traceId) => {
  const t0 = performance.now();
  location.hash = '#/trace/' + traceId;
  while (!(document.querySelector('#detail-title').textContent.includes(traceId)
           && document.querySelector('#timeline').getAttribute('aria-rowcount') !== '0'
           && document.querySelector('#timeline .wf-row'))) {
    await new Promise((r) => setTimeout(r, 1));
  }
  await new Promise((r) => requestAnimationFrame(() => r()));
  return {ms: performance.now() - t0,
          rows: Number(document.querySelector('#timeline').getAttribute('aria-rowcount')),
          inPage: document.querySelectorAll('#timeline .wf-row').length};
}"""

# The page's own work for one scroll step (adding and removing rows, then layout), without
# waiting for a frame: what decides smoothness on a machine that is not shared.
STEP_JS = """() => {
  const box = document.querySelector('#list-scroll');
  box.scrollTop = 0;
  const times = [];
  while (box.scrollTop + box.clientHeight < box.scrollHeight - 1) {
    const t0 = performance.now();
    box.scrollTop += 3 * 26;
    box.dispatchEvent(new Event('scroll'));
    void document.body.offsetHeight;
    times.push(performance.now() - t0);
  }
  return times.sort((a, b) => a - b);
}"""

SCROLL_JS = """async () => {
  const box = document.querySelector('#list-scroll');
  box.scrollTop = 0;
  await new Promise((r) => requestAnimationFrame(() => r()));
  const frames = [];
  let last = performance.now();
  const step = 3 * 26;
  while (box.scrollTop + box.clientHeight < box.scrollHeight - 1) {
    box.scrollTop += step;
    await new Promise((r) => requestAnimationFrame(() => r()));
    const now = performance.now();
    frames.push(now - last);
    last = now;
  }
  return {frames, rowsInPage: document.querySelectorAll('#trace-list tbody tr').length,
          last: document.querySelector('#trace-list tbody tr:last-child')
            .getAttribute('aria-rowindex')};
}"""


def fill_list(client, count: int) -> None:
    now = time.time()
    docs = []
    for i in range(count):
        start = now - 3000 + i * (2900 / count)
        docs.append(json.dumps({"name": f"svc-{i % 13}", "id": new_id(),
                                "trace_id": new_trace_id(start), "start_time": start,
                                "end_time": start + 0.001 * (i % 500),
                                "http": {"request": {"method": "GET", "url": f"http://x/{i}"},
                                         "response": {"status": 200}},
                                "annotations": {"n": i}}))
        if len(docs) == 50:
            client.put_trace_segments(TraceSegmentDocuments=docs)
            docs = []
    if docs:
        client.put_trace_segments(TraceSegmentDocuments=docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--traces", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    port = free_udp_tcp_port()
    daemon = Xrayd(["--offline", "--store", str(tmp / "traces.db"), "-b", f"127.0.0.1:{port}",
                    "-t", f"127.0.0.1:{port}", "-l", "warn"], tmp)
    try:
        wait_until(lambda: daemon.proc.poll() is None and _up(port), 20, what="xrayd")
        client = xray_client(port)
        subs = 49
        segments = max(1, args.rows // (subs + 1))
        big = []
        for _ in range(2):
            trace_id, docs = big_trace(segments, subs)
            for i in range(0, len(docs), 50):
                client.put_trace_segments(TraceSegmentDocuments=docs[i:i + 50])
            big.append(trace_id)
        fill_list(client, args.traces)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=ensure_chromium(),
                                                 args=LAUNCH_FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/#/traces")
            page.wait_for_selector("#trace-list tbody tr")
            timings = []
            for run in range(args.runs + 1):
                result = page.evaluate(TIMELINE_JS, big[run % 2])
                if run:  # the first run warms the browser's caches
                    timings.append(result["ms"])
            print(f"timeline of {result['rows']} rows ({result['inPage']} in the page): "
                  f"median {statistics.median(timings):.0f} ms, max {max(timings):.0f} ms "
                  f"over {len(timings)} runs")
            page.evaluate("() => { location.hash = '#/traces?range=3600'; }")
            page.wait_for_selector("#trace-list tbody tr")
            started = time.monotonic()
            while int(page.get_attribute("#trace-list", "aria-rowcount")) - 1 < args.traces:
                if page.is_visible("#more"):
                    page.click("#more")
                page.wait_for_timeout(5)
            loaded = time.monotonic() - started
            print(f"list: {args.traces} traces paged in in {loaded:.1f} s "
                  f"({args.traces // 100} pages)")
            steps = page.evaluate(STEP_JS)
            print(f"scroll step (rows swapped + layout, no frame wait): "
                  f"median {statistics.median(steps):.2f} ms, "
                  f"p95 {steps[int(len(steps) * 0.95)]:.2f} ms, max {steps[-1]:.1f} ms "
                  f"over {len(steps)} steps")
            result = page.evaluate(SCROLL_JS)
            frames = sorted(result["frames"])
            p95 = frames[int(len(frames) * 0.95)]
            dropped = sum(1 for f in frames if f > 1000 / 60 + 1)
            print(f"scroll: {len(frames)} frames, median {statistics.median(frames):.1f} ms, "
                  f"p95 {p95:.1f} ms, max {frames[-1]:.1f} ms, {dropped} over 16.7 ms; "
                  f"{result['rowsInPage']} rows in the page, last row index {result['last']}")
            browser.close()
    finally:
        daemon.kill()


def _up(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats", timeout=1):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
