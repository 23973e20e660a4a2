"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fd 3 in, fd 4 out,
NUL-terminated JSON): no WebDriver, no extra package, no debugging port another process could reach.

:class:`Chromium` loads pages, evaluates JavaScript in them, waits for what a page renders and takes screenshots;
:func:`render_in_chromium` is the one-shot probe of a self-contained HTML report (its images and console errors).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Chromium:
    """One headless Chromium with a new empty profile, one page attached (``with Chromium(profile) as browser``)."""

    def __init__(self, profile: Path, timeout: float = 60, window: tuple[int, int] = (1280, 800)) -> None:
        self.profile, self.timeout, self.window = profile, timeout, window
        self.events: list[dict] = []
        self._buffer, self._counter, self.session = b"", 0, ""

    def __enter__(self) -> Chromium:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Above fd 4, so that dup2 onto 3 and 4 in the child neither clobbers them nor is a no-op (a no-op keeps
        # close-on-exec set and Chromium finds no pipe).
        child_in = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def wire_pipes() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        width, height = self.window
        self.process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "--hide-scrollbars", "--remote-debugging-pipe"],
            close_fds=False, preexec_fn=wire_pipes, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(child_in)
        os.close(child_out)
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})
            self.session = self.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})[
                "sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable", session=self.session)
            self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                             "deviceScaleFactor": 1, "mobile": False}, self.session)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.process.poll() is None:
                os.write(self._to_chrome, json.dumps({"id": -1, "method": "Browser.close"}).encode() + b"\0")
            self.process.wait(timeout=15)
        except (subprocess.TimeoutExpired, OSError):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._from_chrome)
            os.close(self._to_chrome)

    # -- the protocol ------------------------------------------------------------------------------------------
    def _until(self, predicate: Callable[[dict], bool], deadline: float) -> dict:
        while time.time() < deadline:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if predicate(message):
                    return message
            if select.select([self._from_chrome], [], [], 1)[0]:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
        raise TimeoutError("no answer from chromium")

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._counter += 1
        message: dict[str, Any] = {"id": self._counter, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        answer = self._until(lambda m: m.get("id") == message["id"], time.time() + self.timeout)
        assert "error" not in answer, answer
        return answer["result"]

    # -- what a test does with a page ----------------------------------------------------------------------------
    def navigate(self, url: str) -> None:
        """Load ``url`` and wait for its load event (a single-page app renders after it: :meth:`wait_for`)."""
        seen = len(self.events)
        answer = self.call("Page.navigate", {"url": url}, self.session)
        if "loaderId" not in answer:  # a same-document navigation (only the #fragment changed): no load event
            return
        if not any(e.get("method") == "Page.loadEventFired" for e in self.events[seen:]):
            self._until(lambda m: m.get("method") == "Page.loadEventFired", time.time() + self.timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        answer = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, self.session)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression!r} threw: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy (returned); fail after ``timeout`` s (a bound on a hang,
        not a timing assumption: the page renders when the busy machine gets to it)."""
        deadline = time.time() + (timeout or self.timeout)
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.3)
        text = self.evaluate("document.body ? document.body.innerText.slice(0, 1500) : ''")
        raise TimeoutError(f"the page never showed {what}; it shows: {text!r}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"}, self.session)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def errors(self) -> list[dict]:
        """console.error calls, uncaught exceptions and error log entries (blocked or failed loads) so far."""
        return [e for e in self.events
                if (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
                or e["method"] == "Runtime.exceptionThrown"
                or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]


def render_in_chromium(page: Path, profile: Path, timeout: float = 60) -> tuple[list, list]:
    """Load the file ``page`` in headless Chromium. Returns (per image [complete, naturalWidth, naturalHeight], the
    console errors: console.error calls, uncaught exceptions and error log entries such as blocked or failed
    loads)."""
    with Chromium(profile, timeout=timeout) as browser:
        browser.navigate(page.resolve().as_uri())
        images = browser.evaluate(
            "Array.from(document.images, i => [i.complete, i.naturalWidth, i.naturalHeight])")
        return images, browser.errors()
