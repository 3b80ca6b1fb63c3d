"""The web page in a real browser: headless Chromium (Debian's `chromium`, no browser
download) driven by Playwright opens the page of a real `crdtim serve --http`, sees the
list, pins a conversation by clicking, and sees a write made on a peer replica (command
line) appear without a reload. Saves build/http-page.png. Skips, saying why, when the
browser or Playwright is missing (`.ci/run` installs chromium when it can)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("hypercorn")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install '.[browser]')")

from http_servers import cli, two_replicas  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parent.parent / "build" / "http-page.png"
TIMEOUT_MS = 15_000


def test_the_page_lists_pins_and_follows_a_peer_write(tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with two_replicas(tmp_path) as (a, port), sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as e:  # a browser that cannot start here: say why
            pytest.skip(f"chromium did not start: {str(e).splitlines()[0]}")
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 520})
            page.goto(f"http://127.0.0.1:{port}/")
            expect = sync_api.expect
            rows = page.locator("#list li")
            expect(rows).to_have_count(3, timeout=TIMEOUT_MS)  # replicated from a
            expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT_MS)
            expect(rows.first).to_contain_text("Work")  # pinned first
            expect(page.locator("#list li", has_text="Family").locator(".badge")).to_have_text(
                "2")

            page.locator("#list li", has_text="Alice").click()
            expect(page.locator("#detail-title")).to_have_text("Alice")
            page.locator("#pin").click()
            expect(page.locator("#pin")).to_have_text("Unpin", timeout=TIMEOUT_MS)
            expect(page.locator("#list li", has_text="Alice").locator(".mark.pinned")) \
                .to_be_visible()

            # A write on the other replica, through its command line: replicated to the
            # page's server and pushed to the page by the change feed; no reload.
            cli(a, "title", "family", "Family <b>dinner</b>")
            cli(a, "mute", "family")
            family = page.locator("#list li", has_text="Family <b>dinner</b>")
            expect(family).to_have_count(1, timeout=TIMEOUT_MS)  # the markup shown as text
            expect(family.locator(".mark.muted")).to_be_visible(timeout=TIMEOUT_MS)
            assert page.locator("#list b").count() == 0
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        finally:
            browser.close()
