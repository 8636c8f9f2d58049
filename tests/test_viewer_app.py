"""The trace viewer as a user meets it, in headless Debian chromium driven by playwright, on one
store filled by real aws-xray-sdk apps (and raw documents the SDK would never send): routes
that survive reload and back, the timeline across services, the service map's layout, the
response-time chart, live updates, hostile and oddly shaped documents. Screenshots go to
test-artifacts/."""

from __future__ import annotations

import time
import urllib.request

import pytest

from conftest import free_port, free_udp_tcp_port, send_udp, wait_until
from offline_support import recorder, xray_client
from test_offline_api import run_app
from test_viewer_browser import ARTIFACTS, browser  # noqa: F401  (the module's browser)
from viewer_support import (
    XSS,
    big_trace,
    bulk,
    hostile_document,
    odd_documents,
    send_documents,
    six_services,
)

pytestmark = pytest.mark.slow


class Site:
    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from conftest import Xrayd

    tmp = tmp_path_factory.mktemp("viewer")
    port, otlp_port = free_udp_tcp_port(), free_port()
    daemon = Xrayd(["--offline", "--store", str(tmp / "traces.db"), "-b", f"127.0.0.1:{port}",
                    "-t", f"127.0.0.1:{port}", "-l", "info",
                    "--otlp-http-address", f"127.0.0.1:{otlp_port}", "--otlp-grpc-address", "off"],
                   tmp)
    try:
        daemon.wait_for("Trace viewer and X-Ray API at")
        daemon.wait_for(f"OTLP/HTTP on 127.0.0.1:{otlp_port}")
        site = Site(port)
        site.otlp = f"http://127.0.0.1:{otlp_port}/v1/traces"
        rec = recorder(f"127.0.0.1:{port}")
        client = xray_client(port)
        begin = time.time() - 60
        site.app_ids = run_app(rec, requests=4, fail_every=2)
        site.bulk_ids = bulk(rec, 120)
        site.hostile = hostile_document()
        site.odd = odd_documents()
        send_documents(port, [site.hostile, *site.odd])
        site.big_id, big_docs = big_trace()
        for i in range(0, len(big_docs), 50):
            client.put_trace_segments(TraceSegmentDocuments=big_docs[i:i + 50])
        time.sleep(0.2)
        # The map's own time range holds only the six-service traces.
        site.map_start = time.time()
        site.map_ids = six_services(rec)
        site.map_end = time.time() + 0.5
        expected = 4 + 120 + 1 + len(site.odd) + 1 + len(site.map_ids)

        def stored():
            answer = client.get_trace_summaries(StartTime=begin, EndTime=time.time() + 60)
            return answer["TracesProcessedCount"] >= expected

        wait_until(stored, timeout=30, what=f"{expected} traces")
        site.daemon = daemon
        site.rec = rec
        ARTIFACTS.mkdir(exist_ok=True)
        yield site
    finally:
        daemon.kill()


@pytest.fixture
def page(browser, site):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.close()
    assert errors == [], errors


def rows_of(page) -> int:
    return int(page.get_attribute("#trace-list", "aria-rowcount")) - 1


def in_viewport(page, selector: str) -> bool:
    return page.evaluate(
        """(sel) => { const r = document.querySelector(sel).getBoundingClientRect();
           return r.top >= 0 && r.left >= 0 && r.top < innerHeight - 40 && r.width > 0
             && r.bottom <= innerHeight + 1 && r.right <= innerWidth + 1; }""", selector)


def test_trace_url_opens_the_timeline_and_the_server_sends_a_strict_csp(page, site):
    trace_id = site.app_ids[2]
    response = page.goto(f"{site.base}/trace/{trace_id}")
    assert page.url.endswith(f"/#/trace/{trace_id}")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    page.wait_for_selector("#timeline .wf-row", timeout=10000)
    names = page.locator("#timeline .wf-name").all_inner_texts()
    assert any(n.startswith("checkout-api") for n in names)
    assert any(n.startswith("charge-card") and "fault" in n for n in names)
    assert page.locator("#tl-axis text").count() >= 3  # a time axis with ticks
    assert "checkout-api" in page.inner_text("#legend")
    assert in_viewport(page, "#entity") and "card declined" in page.inner_text("#entity")
    # A reload stays on the trace.
    page.reload()
    page.wait_for_selector("#timeline .wf-row", timeout=10000)
    assert trace_id in page.inner_text("#detail-title")
    page.screenshot(path=str(ARTIFACTS / "viewer-trace.png"))
    # Keyboard: down moves the selection, Escape goes back to a list.
    page.focus("#timeline")
    page.keyboard.press("Home")
    first = page.inner_text("#entity h3")
    page.keyboard.press("ArrowDown")
    assert page.inner_text("#entity h3") != first
    assert page.locator("#timeline .wf-row.selected").count() == 1
    page.keyboard.press("Escape")
    page.wait_for_selector("#trace-list tbody tr", timeout=10000)


def test_click_a_row_then_back_keeps_the_filter_and_the_scroll(page, site):
    page.goto(f'{site.base}/#/traces?filter=service("bulk-job")')
    page.wait_for_function("() => document.querySelectorAll('#trace-list tbody tr').length > 10",
                           timeout=10000)
    assert page.input_value("#filter") == 'service("bulk-job")'
    # Scrolling near the end of the first page loads the second one.
    page.eval_on_selector("#list-scroll", "e => e.scrollTop = e.scrollHeight")
    page.wait_for_function("() => Number(document.querySelector('#trace-list')"
                           ".getAttribute('aria-rowcount')) > 101", timeout=10000)
    page.eval_on_selector("#list-scroll", "e => e.scrollTop = 600")
    page.wait_for_timeout(100)
    row = page.locator("#trace-list tbody tr").nth(12)
    trace_id = row.get_attribute("data-trace")
    top_before = row.bounding_box()["y"]
    row.click()
    page.wait_for_selector("#timeline .wf-row", timeout=10000)
    assert page.url.endswith(f"#/trace/{trace_id}")
    assert in_viewport(page, "#timeline") and in_viewport(page, "#entity")
    assert "bulk-job" in page.inner_text("#entity")
    page.go_back()
    page.wait_for_selector(f'#trace-list tr[data-trace="{trace_id}"]', timeout=10000)
    assert page.input_value("#filter") == 'service("bulk-job")'
    assert page.eval_on_selector("#list-scroll", "e => e.scrollTop") == 600
    again = page.locator(f'#trace-list tr[data-trace="{trace_id}"]').bounding_box()["y"]
    assert abs(again - top_before) < 2
    page.go_forward()
    page.wait_for_selector("#timeline .wf-row", timeout=10000)
    assert trace_id in page.inner_text("#detail-title")


def test_called_service_is_nested_under_the_calling_subsegment(page, site):
    page.goto(f"{site.base}/#/trace/{site.map_ids[1]}")  # batch-worker → orders-api → payments
    page.wait_for_selector('#timeline .wf-row[data-service="payments"]', timeout=10000)
    rows = page.eval_on_selector_all(
        "#timeline .wf-row",
        "rows => rows.map(r => ({name: r.querySelector('.wf-name').textContent,"
        " depth: Number(r.dataset.depth), service: r.dataset.service,"
        " x: r.querySelector('.wf-name').getBoundingClientRect().left"
        " + parseFloat(getComputedStyle(r.querySelector('.wf-name')).paddingLeft)}))")
    names = [r["name"] for r in rows]
    assert names[0].startswith("batch-worker") and rows[0]["depth"] == 0
    for callee in ("orders-api", "payments", "reports-svc"):
        # the remote subsegment named after the callee, then the callee's own segment under it
        index = next(i for i, r in enumerate(rows)
                     if r["name"].startswith(callee) and r["service"] != callee)
        caller, segment = rows[index], rows[index + 1]
        assert segment["service"] == callee and segment["name"].startswith(callee)
        assert segment["depth"] == caller["depth"] + 1
        assert segment["x"] > caller["x"]
    assert sum(1 for r in rows if r["depth"] == 0) == 1
    # Collapsing the caller's subsegment hides the callee.
    page.locator('#timeline .wf-row[data-service="batch-worker"] button.toggle').first.click()
    assert page.locator("#timeline .wf-row").count() == 1


def boxes_script() -> str:
    return """() => {
      const svg = document.querySelector('#map-svg');
      const canvas = svg.getBoundingClientRect();
      const nodes = [...svg.querySelectorAll('g.node')].map(g => {
        const r = g.querySelector('rect').getBBox();
        const labels = [...g.querySelectorAll('text')].map(t => {
          const b = t.getBBox(), c = t.getBoundingClientRect();
          return {x: b.x, y: b.y, w: b.width, h: b.height,
                  inside: c.left >= canvas.left && c.right <= canvas.right
                    && c.top >= canvas.top && c.bottom <= canvas.bottom};
        });
        return {name: g.dataset.name, box: {x: r.x, y: r.y, w: r.width, h: r.height}, labels};
      });
      return nodes;
    }"""


def overlap(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def test_six_service_map_with_two_roots_has_no_overlaps(page, site):
    page.goto(f"{site.base}/#/map?start={site.map_start}&end={site.map_end}")
    page.wait_for_selector('g.node[data-name="payments"]', timeout=15000)
    nodes = page.evaluate(boxes_script())
    names = {n["name"] for n in nodes}
    assert {"web-frontend", "batch-worker", "orders-api", "payments", "reports-svc",
            "inventory-db"} <= names, names
    assert "checkout-api" not in names  # the map's own time range
    boxes = [n["box"] for n in nodes]
    labels = [label for n in nodes for label in n["labels"]]
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if overlap(a, b)]
    assert not [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:] if overlap(a, b)]
    assert all(label["inside"] for label in labels)
    # callers left of callees: a layered drawing
    x = {n["name"]: n["box"]["x"] for n in nodes}
    assert x["web-frontend"] < x["orders-api"] < x["payments"]
    assert x["batch-worker"] < x["orders-api"]
    page.screenshot(path=str(ARTIFACTS / "viewer-map.png"))
    # Pan and zoom move the view box, by keyboard too.
    before = page.get_attribute("#map-svg", "viewBox")
    page.focus("#map-svg")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("+")
    after = [float(v) for v in page.get_attribute("#map-svg", "viewBox").split()]
    start = [float(v) for v in before.split()]
    assert after[2] < start[2] and after[0] != start[0]
    page.click("#zoom-fit")
    assert page.get_attribute("#map-svg", "viewBox") == before
    # Click a node: its statistics, then its traces.
    page.click('g.node[data-name="orders-api"]')
    page.wait_for_selector("#map-detail:not([hidden])")
    assert page.url.split("#")[1].startswith("/service/orders-api")
    assert "Requests" in page.inner_text("#map-detail")
    page.click("#service-traces")
    page.wait_for_selector("#trace-list tbody tr", timeout=10000)
    assert page.input_value("#filter") == 'service("orders-api")'
    assert rows_of(page) == len(site.map_ids)


def test_dragging_on_the_distribution_narrows_the_list(page, site):
    page.goto(f'{site.base}/#/traces?filter=service("bulk-job")')
    page.wait_for_selector("#dist-chart .dist-bar", timeout=10000)
    page.wait_for_function("() => document.querySelectorAll('#trace-list tbody tr').length > 10")
    before = int(page.inner_text("#summary-line").split(" of ")[1].split()[0])
    box = page.locator("#dist-chart").bounding_box()
    page.mouse.move(box["x"] + 40, box["y"] + 50)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + 50, steps=5)
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('#filter').value.includes('responsetime')")
    text = page.input_value("#filter")
    assert text.startswith('service("bulk-job") AND responsetime >= ')
    high = float(text.rsplit("<= ", 1)[1])
    page.wait_for_function("(h) => new URLSearchParams(location.hash.split('?')[1])"
                           ".get('filter').includes(h)",
                           arg=f"responsetime <= {high}")
    page.wait_for_function(
        "(n) => { const t = document.querySelector('#summary-line').textContent;"
        " const n2 = document.querySelectorAll('#trace-list tbody tr').length;"
        " return t.includes('(filtered)') && n2 > 0 && n2 < n; }", arg=before)
    shown = page.eval_on_selector_all("#trace-list tbody tr", "rows => rows.length")
    assert 0 < shown < before
    responses = page.locator("#trace-list tbody td.col-response").all_inner_texts()
    assert all(float(r.split()[0]) / 1000 <= high for r in responses if r.endswith(" ms"))


def test_live_updates_keep_the_loaded_second_page_and_the_scroll(page, site):
    page.goto(f'{site.base}/#/traces?filter=service("bulk-job")')
    page.wait_for_function("() => document.querySelectorAll('#trace-list tbody tr').length > 10")
    page.click("#more")
    page.wait_for_function("() => Number(document.querySelector('#trace-list')"
                           ".getAttribute('aria-rowcount')) > 101", timeout=10000)
    loaded = rows_of(page)
    page.eval_on_selector("#list-scroll", "e => e.scrollTop = 1200")
    page.wait_for_timeout(100)
    anchor = page.locator("#trace-list tbody tr").nth(10)
    anchor_id = anchor.get_attribute("data-trace")
    anchor_y = anchor.bounding_box()["y"]
    new_ids = bulk(site.rec, 2)
    page.wait_for_function("(n) => Number(document.querySelector('#trace-list')"
                           ".getAttribute('aria-rowcount')) - 1 >= n", arg=loaded + 2,
                           timeout=20000)
    assert rows_of(page) == loaded + 2
    moved = page.locator(f'#trace-list tr[data-trace="{anchor_id}"]').bounding_box()["y"]
    assert abs(moved - anchor_y) < 2
    page.eval_on_selector("#list-scroll", "e => e.scrollTop = 0")
    page.wait_for_timeout(100)
    top = page.locator("#trace-list tbody tr").nth(0).get_attribute("data-trace")
    assert top in new_ids


def test_invalid_filter_clears_the_list_and_marks_the_position(page, site):
    page.goto(f"{site.base}/#/traces")
    page.wait_for_selector("#trace-list tbody tr", timeout=10000)
    page.fill("#filter", 'service("bulk-job") AND annotation.n = ')
    page.press("#filter", "Enter")
    page.wait_for_selector("#query-error:not([hidden])", timeout=10000)
    message = page.inner_text("#query-error")
    assert "InvalidRequestException" in message and "position" in message
    assert page.locator("#query-error pre.caret").count() == 1
    assert page.locator("#trace-list tbody tr").count() == 0 and rows_of(page) == 0


def test_hostile_document_is_text_and_runs_nothing(page, site):
    trace_id = site.hostile["trace_id"]
    page.goto(f'{site.base}/#/traces?filter=annotation.case = "xss"')
    page.wait_for_selector(f'tr[data-trace="{trace_id}"]', timeout=10000)
    assert XSS in page.inner_text(f'tr[data-trace="{trace_id}"]')
    page.goto(f"{site.base}/#/trace/{trace_id}")
    page.wait_for_selector("#timeline .wf-row", timeout=10000)
    assert page.inner_text("#timeline .wf-name").startswith(XSS)
    page.locator("#entity summary", has_text="Raw document").click()
    entity = page.inner_text("#entity")
    assert '<img src=y onerror="window.__xss=4">' in entity and "<iframe src=" in entity
    page.locator("#timeline .wf-row").nth(1).click()
    assert page.evaluate("() => window.__xss") is None
    assert page.evaluate("() => document.querySelectorAll('img, iframe, script:not([src]),"
                         " main svg[onload], a[href^=javascript]').length") == 0


def test_documents_of_odd_shapes_draw_what_can_be_drawn(page, site):
    for doc in site.odd:
        page.goto(f"{site.base}/#/trace/{doc['trace_id']}")
        page.wait_for_selector(f'#timeline .wf-row[data-id="{doc["id"]}"]', timeout=10000)
        names = page.locator("#timeline .wf-name").all_inner_texts()
        assert names[0].startswith(doc["name"])
        if doc["name"] == "odd-null-subsegments":
            assert any(n.startswith("good-sub") for n in names)
            page.locator("#timeline .wf-row", has_text="good-sub").click()
            assert "p.py:x" in page.inner_text("#entity")
        if doc["name"] == "odd-cause":
            assert "in progress" in page.inner_text('#timeline .wf-row:has-text("in-progress-sub")')
            bar = page.locator('#timeline .wf-row:has-text("in-progress-sub") rect.open')
            assert bar.count() == 1  # drawn open-ended, to the end of the trace


def test_a_large_trace_is_virtualised(page, site):
    page.goto(f"{site.base}/#/trace/{site.big_id}")
    page.wait_for_function("() => document.querySelector('#timeline').getAttribute('aria-rowcount')"
                           " === '5000'", timeout=20000)
    assert page.locator("#timeline .wf-row").count() < 120
    page.eval_on_selector("#tl-scroll", "e => e.scrollTop = e.scrollHeight")
    page.wait_for_selector('#timeline .wf-row:has-text("step-99-48")', timeout=5000)


def test_narrow_window_and_rejected_view(browser, site):  # noqa: F811
    page = browser.new_page(viewport={"width": 800, "height": 900})
    page.goto(f"{site.base}/#/traces")
    page.wait_for_selector("#trace-list tbody tr", timeout=10000)
    cut = page.evaluate("""() => [...document.querySelectorAll(
        '#trace-list tbody tr:first-child td, #trace-list th')]
        .filter(c => c.getBoundingClientRect().right > innerWidth + 1
          || c.getBoundingClientRect().width < 30).map(c => c.className)""")
    assert cut == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 800
    page.screenshot(path=str(ARTIFACTS / "viewer-narrow.png"))
    page.click("#trace-list tbody tr")
    page.wait_for_selector("#timeline .wf-row", timeout=10000)
    assert in_viewport(page, "#timeline")
    assert page.evaluate("document.documentElement.scrollWidth") <= 800
    page.screenshot(path=str(ARTIFACTS / "viewer-narrow-trace.png"))
    page.go_back()
    page.wait_for_selector("#trace-list tbody tr", timeout=10000)
    page.set_viewport_size({"width": 1400, "height": 900})
    page.wait_for_timeout(100)
    page.screenshot(path=str(ARTIFACTS / "viewer-list.png"))
    page.close()
    with urllib.request.urlopen(f"{site.base}/viewer/viewer.js") as answer:
        assert answer.headers["Content-Type"].startswith("text/javascript")
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]


def test_timeline_model_takes_any_shape(page, site):
    """Shapes the store's BatchGetTraces does not answer today (a number as ``subsegments``)
    reach the viewer's model directly: it builds what it can and never throws."""
    page.goto(f"{site.base}/#/rejected")
    page.wait_for_selector("#rejected-summary")
    result = page.evaluate("""async () => {
      const {buildTrace, exceptionsOf, visibleRows} = await import('/viewer/model.js');
      const doc = (extra) => ({Document: JSON.stringify({name: 'root', id: 'a1', start_time: 1,
                                                         end_time: 2, ...extra})});
      const shapes = [{subsegments: 5}, {subsegments: {x: 1}}, {subsegments: [null, 3, 'x',
        {name: 'kid', id: 'b2', start_time: 1.5, subsegments: [[], null]}]},
        {cause: {exceptions: 7}}, {cause: {exceptions: [null, {stack: 'x'}, {stack: [null, 1,
        {path: 'p', line: {}}]}]}}, {name: {html: '<b>'}, start_time: 'soon'}];
      const out = [];
      for (const extra of shapes) {
        const model = buildTrace([doc(extra), {Document: 'not json'}, null, {Document: '[1]'}]);
        const rows = visibleRows(model.roots, new Set());
        out.push({rows: rows.map(r => r.name), open: rows.map(r => r.inProgress),
                  exceptions: rows.map(r => exceptionsOf(r.entity).length)});
      }
      return out;
    }""")
    assert [r["rows"] for r in result] == [
        ["root"], ["root"], ["root", "kid"], ["root"], ["root"], ['{"html":"<b>"}']]
    assert result[3]["exceptions"] == [0] and result[4]["exceptions"] == [2]
    assert result[2]["open"] == [False, True]  # kid has no end_time: in progress


def test_distribution_by_keyboard(page, site):
    page.goto(f'{site.base}/#/traces?filter=service("bulk-job")')
    page.wait_for_selector("#dist-chart .dist-bar", timeout=10000)
    page.focus("#dist-chart")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowRight")
    assert "Enter narrows the list" in page.get_attribute("#dist-chart", "aria-label")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#filter').value.includes('responsetime')")
    assert page.input_value("#filter").startswith('service("bulk-job") AND responsetime >= 0 AND')


def test_map_draws_the_x_ray_shaped_graph_of_the_store(page, site):
    """The real GetServiceGraph answer for the six services: X-Ray's client node, services
    without a Type beside one on EC2, inferred remote and AWS nodes, edges with histograms."""
    graph = xray_client(site.port).get_service_graph(StartTime=site.map_start,
                                                     EndTime=site.map_end)
    by_name = {s["Name"]: s for s in graph["Services"]}
    assert by_name["client"]["Type"] == "client" and "Type" not in by_name["orders-api"]
    page.goto(f"{site.base}/#/map?start={site.map_start}&end={site.map_end}")
    page.wait_for_selector('g.node[data-name="report-cache"]', timeout=15000)
    assert page.locator('g.node[data-name="client"]').count() == 1
    assert "AWS::DynamoDB::Table" in page.text_content('g.node[data-name="report-cache"]')
    assert "AWS::EC2::Instance" in page.text_content('g.node[data-name="web-frontend"]')
    assert "Database::SQL" in page.text_content('g.node[data-name="inventory-db"]')
    # A node without a Type has no empty line: its name, then its requests.
    lines = page.locator('g.node[data-name="orders-api"] text').all_text_contents()
    assert lines[0] == "orders-api" and lines[1].startswith(f"{len(site.map_ids)} req")
    nodes = page.evaluate(boxes_script())
    x = {n["name"]: n["box"]["x"] for n in nodes}
    assert x["client"] < x["web-frontend"] < x["orders-api"] < x["payments"]
    assert x["client"] < x["batch-worker"] < x["reports-svc"] < x["report-cache"]
    # Edges: calls and latency on hover, from the edge's own statistics.
    tip = page.text_content('g.edge-g[data-from="client"][data-to="web-frontend"] title')
    assert tip.startswith(f"client → web-frontend: {len(site.map_ids) // 2} calls")
    assert " avg" in tip
    # A service's statistics and its histogram as the store answers them.
    payments = by_name["payments"]
    faults = payments["SummaryStatistics"]["FaultStatistics"]["TotalCount"]
    total = payments["SummaryStatistics"]["TotalCount"]
    assert 0 < faults < total
    page.click('g.node[data-name="payments"]')
    page.wait_for_selector("#map-detail:not([hidden])")
    detail = page.inner_text("#map-detail")
    assert f"Requests\n{total}" in detail
    assert f"Faults (5xx)\n{faults} ({round(100 * faults / total)}%)" in detail
    bars = page.locator("#map-detail svg.histogram rect").count()
    assert bars == len(payments["ResponseTimeHistogram"]) > 0
    assert page.locator("#service-traces").count() == 1
    # The client (its requests: one per trace) has no traces "of" it.
    page.click('g.node[data-name="client"]')
    page.wait_for_function("() => document.querySelector('#map-detail h3')"
                           ".textContent.startsWith('client')")
    assert f"Requests\n{len(site.map_ids)}" in page.inner_text("#map-detail")
    assert page.locator("#service-traces").count() == 0
    # An inferred AWS node's traces: by its name and type.
    page.click('g.node[data-name="report-cache"]')
    page.click("#service-traces")
    page.wait_for_selector("#trace-list tbody tr", timeout=10000)
    assert page.input_value("#filter") == (
        'service(id(name: "report-cache", type: "AWS::DynamoDB::Table"))')
    page.wait_for_function("(n) => Number(document.querySelector('#trace-list')"
                           ".getAttribute('aria-rowcount')) - 1 === n",
                           arg=len(site.map_ids) // 2, timeout=10000)
    shown = set(page.eval_on_selector_all("#trace-list tbody tr",
                                          "rows => rows.map(r => r.dataset.trace)"))
    assert shown == set(site.map_ids[1::2])  # the batch-worker traces, through reports-svc


def bulk_response_times(site) -> dict[str, float]:
    """Every bulk-job trace's response time, as boto3 reads them through GetTraceSummaries."""
    client, now, times, token = xray_client(site.port), time.time(), {}, None
    while True:
        extra = {"NextToken": token} if token else {}
        answer = client.get_trace_summaries(StartTime=now - 259200, EndTime=now + 60,
                                            FilterExpression='service("bulk-job")', **extra)
        times.update({s["Id"]: s["ResponseTime"] for s in answer["TraceSummaries"]})
        token = answer.get("NextToken")
        if not token:
            return times


def first_row_is(page, trace_id: str) -> None:
    page.wait_for_function("(id) => document.querySelector('#trace-list tbody tr')"
                           "?.dataset.trace === id", arg=trace_id, timeout=10000)


def test_columns_sort_the_whole_query_and_long_ranges_show_dates(page, site):
    times = bulk_response_times(site)
    assert len(times) > 100  # more than the first page
    page.goto(f'{site.base}/#/traces?filter=service("bulk-job")&range=259200')
    page.wait_for_function("() => document.querySelectorAll('#trace-list tbody tr').length > 10")
    assert page.inner_text("#trace-list tbody tr .col-start").startswith(time.strftime("%Y-"))
    page.click('button.sort[data-sort="response"]')
    page.wait_for_function("() => location.hash.includes('sort=response%3Aasc')")
    page.reload()
    # The fastest of all the query's traces comes first, not the fastest of the first page.
    first_row_is(page, min(times, key=times.get))
    assert page.get_attribute("th.col-response", "aria-sort") == "ascending"
    values = [float(v.split()[0]) for v in
              page.locator("#trace-list tbody td.col-response").all_inner_texts()]
    assert values == sorted(values) and values[0] < values[-1]
    assert rows_of(page) == 100 and "sorted within" not in page.inner_text("#summary-line")
    # The next sorted page continues the order.
    page.click("#more")
    page.wait_for_function("(n) => Number(document.querySelector('#trace-list')"
                           ".getAttribute('aria-rowcount')) - 1 === n", arg=len(times))
    page.eval_on_selector("#list-scroll", "e => e.scrollTop = e.scrollHeight")
    page.wait_for_function("(id) => [...document.querySelectorAll('#trace-list tbody tr')]"
                           ".some(r => r.dataset.trace === id)", arg=max(times, key=times.get))
    page.click('button.sort[data-sort="response"]')
    page.wait_for_function("() => location.hash.includes('sort=response%3Adesc')")
    first_row_is(page, max(times, key=times.get))
    # A column the daemon does not sort by orders the loaded rows, and the list says so.
    page.click('button.sort[data-sort="status"]')
    page.wait_for_function("() => document.querySelector('#summary-line').textContent"
                           ".includes('sorted within the loaded traces')")


def test_an_opentelemetry_sdk_trace_shows_in_the_viewer(page, site):
    """An app on the OpenTelemetry SDK with the standard OTLP/HTTP exporter: its server span is
    a segment in the list and the timeline, its client and internal spans subsegments, the
    internal span's exception in the details panel."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from test_otlp_receivers import run_app as run_otel_app

    trace_id = run_otel_app(OTLPSpanExporter(endpoint=site.otlp), service="otel-shop")
    page.goto(f'{site.base}/#/traces?filter=service("otel-shop")')
    row = page.wait_for_selector(f'#trace-list tr[data-trace="{trace_id}"]', timeout=15000)
    assert "http://shop.local/items" in row.inner_text() and "500" in row.inner_text()
    row.click()
    page.wait_for_selector('#timeline .wf-row:has-text("compute")', timeout=10000)
    rows = page.eval_on_selector_all(
        "#timeline .wf-row", "rows => rows.map(r => ({name: r.querySelector('.wf-name')"
        ".textContent, depth: Number(r.dataset.depth), service: r.dataset.service}))")
    assert rows[0]["name"].startswith("otel-shop") and "fault" in rows[0]["name"]
    assert rows[0]["depth"] == 0
    children = rows[1:]
    assert len(children) == 2 and all(r["depth"] == 1 for r in children)
    assert {next(n for n in ("backend.local", "compute") if r["name"].startswith(n))
            for r in children} == {"backend.local", "compute"}
    page.locator("#timeline .wf-row", has_text="compute").click()
    entity = page.inner_text("#entity")
    assert "ValueError" in entity and "out of stock" in entity and "run_app" in entity
    page.locator("#timeline .wf-row", has_text="backend.local").click()
    assert "http://backend.local/stock" in page.inner_text("#entity")


def otlp_post(url: str, body: bytes, content_type: str) -> int:
    request = urllib.request.Request(url, body, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_rejected_view_shows_every_intake_with_reason_and_preview(page, site):
    import base64

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    header = b'{"format": "json", "version": 1}\n'
    garbage = b"\x00garbage<img src=x onerror=window.__xss=9>" + b"z" * 400
    send_udp(site.port, garbage,
             header + b"T1S" + b"!!not base64!!",
             header + b"T1S" + base64.b64encode(b"\xff\xff\xff\xff"))
    assert otlp_post(site.otlp, b"\xff\x01 not protobuf", "application/x-protobuf") == 400
    no_ids = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[
        ScopeSpans(spans=[Span(name="span-without-ids")])])])
    assert otlp_post(site.otlp, no_ids.SerializeToString(), "application/x-protobuf") == 200
    page.goto(f"{site.base}/#/rejected")
    page.wait_for_function("() => document.querySelectorAll('#rejected-list tbody tr').length >= 5",
                           timeout=15000)
    rows = page.eval_on_selector_all(
        "#rejected-list tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    by_intake: dict[str, list[list[str]]] = {}
    for _received, intake, code, reason, shown in rows:
        by_intake.setdefault(intake, []).append([code, reason, shown])
    [shown_garbage] = by_intake["xray"]
    assert shown_garbage[0] == "missing_header_separator" and "no newline" in shown_garbage[1]
    assert shown_garbage[2].startswith("\\x00garbage<img src=x onerror=window.__xss=9>zz")
    assert shown_garbage[2].endswith(f"… ({len(garbage)} bytes)")
    assert sorted(code for code, _r, _s in by_intake["otlp-udp"]) == [
        "otlp_bad_base64", "otlp_bad_protobuf"]
    http = {code: (reason, shown) for code, reason, shown in by_intake["otlp-http"]}
    assert len(http) == 2
    bad_body = next(v for k, v in http.items() if "protobuf" in k or "decode" in k)
    assert bad_body[0].startswith("400: ") and bad_body[1] == "\\xff\\x01 not protobuf"
    spans = next(v for k, v in http.items() if v is not bad_body)
    assert "1 of 1 spans rejected" in spans[0]
    assert page.evaluate("() => window.__xss") is None
    assert page.locator("#rejected-list img").count() == 0
    # The header counts what each intake took in and rejected.
    page.wait_for_function("() => document.querySelector("
                           "'#intake-counts [data-intake=\"otlp-http\"]')"
                           "?.textContent.includes('(2 rejected)')", timeout=10000)
    header_text = {source: page.inner_text(f'#intake-counts [data-intake="{source}"]')
                   for source in ("xray", "otlp-udp", "otlp-http", "otlp-grpc")}
    assert header_text["otlp-udp"].endswith("(2 rejected)")
    assert header_text["xray"].endswith("(1 rejected)")
    assert header_text["otlp-grpc"] == "otlp-grpc 0"
    page.screenshot(path=str(ARTIFACTS / "viewer-rejected.png"))
