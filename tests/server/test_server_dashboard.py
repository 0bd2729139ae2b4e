"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright).

It loads, lists sessions created through the API, opens one, closes it, and the web chat
answers. A screenshot of each page goes to artifacts/ (kept by CI, ignored by git).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.sync_api import Page, expect, sync_playwright

from backends import IN_CI
from chatstate.server import Settings, create_app

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]


def chromium_path() -> str:
    found = os.environ.get("CHATSTATE_CHROMIUM") or shutil.which("chromium") or ""
    if not found or not os.path.exists(found):
        message = "Debian's chromium is not installed (apt-get install -y chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(Settings(store_url="memory://", port=port, chat_burst=1000), lifecycle=None)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the dashboard server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[Page]:
    executable = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        yield pg
        browser.close()
        assert errors == [], errors


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def test_dashboard_lists_opens_and_closes_a_session(server: str, page: Page) -> None:
    with httpx.Client(base_url=server) as api:
        for user in ("alice", "bob"):
            assert api.post("/v1/chat", json={"message": "hello", "user_id": user}).is_success
        assert api.post("/v1/chat", json={"message": "Alice", "user_id": "alice"}).is_success

    page.goto(server + "/")
    expect(page.locator("tbody tr[data-id]")).to_have_count(2)
    expect(page.locator("tbody")).to_contain_text("web:user:alice")
    expect(page.locator("#live")).to_have_text("live")
    shot(page, "sessions")

    page.fill("input[type=search]", "web:user:al")
    expect(page.locator("tbody tr[data-id]")).to_have_count(1)
    page.locator("tbody tr[data-id]").first.click()
    expect(page.locator("h1.mono")).to_have_text("web:user:alice")
    expect(page.locator("#history .msg")).to_have_count(4)
    expect(page.locator("#session-data")).to_contain_text('"name": "Alice"')
    shot(page, "session")

    page.get_by_role("button", name="Close session").click()
    page.get_by_label("Reason").fill("resolved")
    page.get_by_role("button", name="Close it").click()
    expect(page.locator(".badge.closed")).to_be_visible()
    expect(page.locator("#session-grid")).to_contain_text("resolved")
    shot(page, "session-closed")
    with httpx.Client(base_url=server) as api:
        record = api.get("/v1/sessions/web:user:alice").json()
    assert record["status"] == "closed" and record["close_reason"] == "resolved"


def test_web_chat_answers(server: str, page: Page) -> None:
    page.goto(server + "/#/chat")
    page.fill("#chat-input", "hi there")
    page.press("#chat-input", "Enter")
    expect(page.locator("#chat-history .msg.assistant")).to_have_count(1)
    expect(page.locator("#chat-history .msg.assistant").first).to_contain_text("What's your name")
    page.fill("#chat-input", "Grace")
    page.press("#chat-input", "Enter")
    expect(page.locator("#chat-history .msg.assistant").nth(1)).to_contain_text("Grace")
    expect(page.locator("#chat-info")).to_contain_text("active")
    shot(page, "chat")


def test_analytics_page_draws_charts(server: str, page: Page) -> None:
    page.goto(server + "/#/analytics")
    expect(page.locator(".stat .value").first).to_have_text("3")
    expect(page.locator("svg.chart").first).to_be_visible()
    expect(page.get_by_text("Close reasons")).to_be_visible()
    shot(page, "analytics")
