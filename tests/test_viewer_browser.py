"""The trace viewer in a real browser: headless Debian chromium driven by playwright finds a
trace by an annotation filter, opens its timeline, sees segment and subsegment names and the
error, sees new traces arrive without reloading, and draws the service map. Screenshots go to
test-artifacts/."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import REPO, datagram, send_udp
from offline_support import recorder, start_offline
from test_offline_api import run_app

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
LAUNCH_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def ensure_chromium() -> str:
    """Debian's chromium, installed when missing (CI machines start fresh; tests run as root)."""
    if shutil.which(CHROMIUM):
        return CHROMIUM
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600,
                       check=True)
        subprocess.run(install, env=env, capture_output=True, timeout=900, check=True)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser():
    path = ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=path, args=LAUNCH_FLAGS,
                                              headless=True)
        yield instance
        instance.close()


@pytest.mark.slow
def test_find_a_trace_by_annotation_and_read_its_timeline(browser, start_xrayd, tmp_path):
    _daemon, port, _store = start_offline(start_xrayd, tmp_path)
    rec = recorder(f"127.0.0.1:{port}")
    trace_ids = run_app(rec, requests=4, fail_every=2)
    send_udp(port, datagram(b"{broken document"))
    ARTIFACTS.mkdir(exist_ok=True)

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector(f'tr[data-trace="{trace_ids[3]}"]', timeout=15000)

    page.fill("#filter", 'annotation.customer = "c2"')
    page.click("#apply")
    page.wait_for_function("() => document.querySelectorAll('#trace-list tbody tr').length === 1",
                           timeout=15000)
    row = page.locator("#trace-list tbody tr")
    assert row.get_attribute("data-trace") == trace_ids[2]
    row.click()
    page.wait_for_selector("#timeline .wf-row", timeout=15000)
    names = page.locator("#timeline .wf-name").all_inner_texts()
    assert any(n.startswith("checkout-api") for n in names)
    assert any(n.startswith("SELECT orders") for n in names)
    assert any(n.startswith("charge-card") and "fault" in n for n in names)
    entity = page.inner_text("#entity")
    assert "card declined" in entity and "ValueError" in entity
    page.locator("#timeline .wf-row", has_text="SELECT orders").click()
    sql = page.inner_text("#entity")
    assert "SELECT * FROM orders WHERE id = ?" in sql and "PostgreSQL" in sql
    page.screenshot(path=str(ARTIFACTS / "viewer-timeline.png"), full_page=True)

    # A new trace shows up without reloading the page (the list polls while "live").
    page.go_back()
    page.fill("#filter", "")
    page.click("#apply")
    segment = rec.begin_segment("late-arrival")
    rec.end_segment()
    page.wait_for_selector(f'tr[data-trace="{segment.trace_id}"]', timeout=20000)

    page.click("#tab-map")
    page.wait_for_selector('g.node[data-name="charge-card"]', timeout=15000)
    edges = page.locator("#edge-list tbody tr").all_inner_texts()
    assert any(e.startswith("checkout-api\tcharge-card\t4\t0\t2") for e in edges), edges
    page.screenshot(path=str(ARTIFACTS / "viewer-service-map.png"), full_page=True)

    page.click("#tab-rejected")
    page.wait_for_selector("#rejected-list tbody tr", timeout=15000)
    assert "{broken document" in page.inner_text("#rejected-list")
    page.close()
    assert (ARTIFACTS / "viewer-timeline.png").stat().st_size > 10_000

