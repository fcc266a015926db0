"""Helpers for driving the sandbox portal and the app in a real headless Chromium."""

import json
import re
import time
from pathlib import Path

CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# The SDK has no timeouts of its own, so every wait in these tests carries an explicit one.
PAGE_TIMEOUT_MS = 30_000
INSTALL_TIMEOUT_MS = 45_000

ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "test-artifacts"
DATE_FOR_LOG = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


class ConsoleLog:
    """Collect console messages and uncaught errors of a page and all its frames."""

    def __init__(self, page):
        self.lines = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.lines.append(f"[pageerror] {error}"))
        page.on("framenavigated", lambda frame: self.lines.append(f"[navigated] {frame.url}"))

    def _on_console(self, message):
        self.lines.append(f"[{message.type}] {message.text}")


def save_artifacts(page, console, test_name):
    """Save a screenshot, the console log and each frame's state for a failed test."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", test_name)
    try:
        page.screenshot(path=str(ARTIFACTS_DIR / f"{stem}.png"), full_page=True)
    except Exception as error:  # a failed screenshot must not hide the failure
        console.lines.append(f"[artifacts] screenshot failed: {error}")
    for frame in page.frames:
        try:
            state = frame.evaluate("document.body && document.body.dataset.state")
            status = frame.evaluate("document.getElementById('status')?.textContent")
        except Exception as error:  # the frame may be gone or mid-navigation
            state, status = None, f"unreadable: {error}"
        console.lines.append(f"[frame] {frame.name!r} {frame.url} state={state} status={status}")
    (ARTIFACTS_DIR / f"{stem}.log").write_text("\n".join(console.lines) + "\n")


def wait_until(predicate, timeout=10.0, interval=0.05, message="condition"):
    """Poll ``predicate`` until it returns a truthy value, and return that value.

    For state that lives in Python (the sandbox's records, the database), where the browser's
    own waiting functions cannot look.

    :raise AssertionError: when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def app_frame(page):
    """Return the Playwright frame of the app's iframe on a sandbox portal page."""
    handle = page.wait_for_selector("#app-frame", state="attached", timeout=PAGE_TIMEOUT_MS)
    return handle.content_frame()


def wait_for_app_state(page, state, timeout=PAGE_TIMEOUT_MS):
    """Wait until the app's iframe shows ``body[data-state=state]``, and return its frame."""
    page.frame_locator("#app-frame").locator(f"body[data-state='{state}']").wait_for(
        state="attached", timeout=timeout
    )
    return app_frame(page)


def received_pings(frame, source=None):
    """Return the messages the app page's subscription received, optionally from one source."""
    messages = frame.evaluate("JSON.stringify(window.appPings || [])")
    messages = json.loads(messages)
    if source is None:
        return messages
    return [message for message in messages if message["params"].get("source") == source]
