"""The web page in a real browser: headless Chromium (Debian's `chromium`, no browser
download) driven by Playwright opens the page of a real `crdtim serve --http`, sees the
list, pins a conversation by clicking, and sees a write made on a peer replica (command
line) appear without a reload; then opens a message history, switches a reply's version
with the switcher, and watches a reply streamed on the peer grow in it. Saves
build/http-page.png (tests/http-page.png, in the README, is a copy of it). Skips, saying
why, when the browser or Playwright is missing (`.ci/run` installs chromium when it can)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("hypercorn")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install '.[browser]')")

from http_servers import cli, two_replicas, write_in_another_process  # noqa: E402

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
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(f"http://127.0.0.1:{port}/")
            expect = sync_api.expect
            rows = page.locator("#list li")
            expect(rows).to_have_count(4, timeout=TIMEOUT_MS)  # replicated from a
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

            # The history: the reply's active version (2 of 2), switched to the first.
            page.locator("#list li", has_text="Assistant").click()
            expect(page.locator("#messages li")).to_have_count(2, timeout=TIMEOUT_MS)
            second = page.locator('#messages li[data-id="a2"]')
            expect(second.locator(".switcher .position")).to_have_text("2/2")
            second.locator(".switcher .previous").click()
            first = page.locator('#messages li[data-id="a1"]')
            expect(first.locator(".switcher .position")).to_have_text("1/2", timeout=TIMEOUT_MS)
            expect(first.locator(".body")).to_have_text("A data type.")
            assert page.locator('#messages li[data-id="a2"]').count() == 0
            shown = page.request.get(f"http://127.0.0.1:{port}/api/im/messages"
                                     "?conversation_id=chat").json()["data"]["messages"]
            assert [m["id"] for m in shown] == ["a1", "q1"]  # switched on the server

            # A reply streamed on the peer replica (another process writing to its directory):
            # each append reaches the open history through the change feed, no reload.
            write_in_another_process(a, 'r.post("chat", "And a delta?", id="q2", '
                                        'reply_to="a1")\n'
                                        'r.post("chat", "", role="assistant", id="a3", '
                                        'reply_to="q2")')
            streamed = page.locator('#messages li[data-id="a3"] .body')
            expect(streamed).to_have_count(1, timeout=TIMEOUT_MS)
            for part, whole in [("Deltas", "Deltas"),
                                (" are small states.", "Deltas are small states.")]:
                write_in_another_process(a, f'r.append("chat", "a3", {part!r})')
                expect(streamed).to_have_text(whole, timeout=TIMEOUT_MS)
            expect(page.locator("#messages li")).to_have_count(4)

            page.fill("#post-text", "Thanks!")  # posting from the page's box
            page.locator("#post").click()
            expect(page.locator("#messages li").last).to_contain_text("Thanks!",
                                                                     timeout=TIMEOUT_MS)
            expect(page.locator("#messages li")).to_have_count(5)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        finally:
            browser.close()
