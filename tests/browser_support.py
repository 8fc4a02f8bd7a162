"""Headless Chromium for the tests that check a page renders: a small DevTools-protocol client.

Chromium (Debian's `chromium` package) runs with `--remote-debugging-pipe`: it reads commands
from fd 3 and writes answers and events to fd 4, each a JSON message ended by a NUL byte. No
Python dependency beyond the standard library and Pillow (for the screenshot check).

`chromium()` finds the browser or installs it (scripts/install_chromium.sh, as root with
apt-get) and skips the test, with the reason, only where it cannot be installed.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "scripts" / "install_chromium.sh"
NAMES = ("chromium", "chromium-browser")
# Schemes a self-contained page may load from: itself, inline data and its own blobs.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, NAMES) if path), None)


def chromium() -> str:
    """The Chromium binary; installed first when missing and possible, else the test skips."""
    found = find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("needs Debian's chromium package, or root and apt-get to install it "
                    f"({INSTALL.relative_to(REPO)})")
    result = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True,
                            timeout=900, check=False)
    found = find_chromium()
    assert result.returncode == 0 and found, \
        f"{INSTALL.name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return found


class BrowserError(RuntimeError):
    pass


class Page:
    """One tab of a headless Chromium, driven over the DevTools pipe.

    Collects what a person would see in the DevTools console as errors (console.error calls,
    uncaught exceptions, failed loads logged by the browser) and every URL the page requests.
    """

    def __init__(self, process: subprocess.Popen, commands: int, events: int):
        self._process = process
        self._commands = commands
        self._events = events
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None
        self.errors: list[str] = []
        self.requests: list[str] = []

    # -- the protocol --------------------------------------------------------------------
    def send(self, method: str, timeout: float = 30, **params: Any) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self._session and not method.startswith("Target."):
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        answer = self._wait(lambda m: m.get("id") == self._next_id, timeout, method)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')}")
        return answer.get("result", {})

    def _wait(self, wanted, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                self._record(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer to {what} within {timeout:.0f} s")
            ready, _, _ = select.select([self._events], [], [], left)
            if ready:
                chunk = os.read(self._events, 1 << 20)
                if not chunk:
                    raise BrowserError(f"chromium exited (code {self._process.poll()}) "
                                       f"while waiting for {what}")
                self._buffer += chunk

    def _record(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            texts = [str(arg.get("value", arg.get("description", ""))) for arg in params["args"]]
            self.errors.append("console." + params["type"] + ": " + " ".join(texts))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught: {text}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry['text']} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])

    # -- what the tests use --------------------------------------------------------------
    def open(self, url: str, timeout: float = 60) -> None:
        """Navigate and wait for the load event."""
        answer = self.send("Page.navigate", url=url)
        if answer.get("errorText"):
            raise BrowserError(f"cannot open {url}: {answer['errorText']}")
        self._wait(lambda m: m.get("method") == "Page.loadEventFired", timeout, f"load of {url}")

    def evaluate(self, expression: str, timeout: float = 30) -> Any:
        """The JSON value of a JavaScript expression (awaited when it is a promise)."""
        result = self.send("Runtime.evaluate", timeout=timeout, expression=expression,
                           returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression[:80]}: "
                               f"{details.get('exception', {}).get('description', details)}")
        return result["result"].get("value")

    def evaluate_in_frame(self, url_prefix: str, expression: str, timeout: float = 30) -> Any:
        """`evaluate` inside the child frame whose URL starts with `url_prefix` (an iframe of
        another origin, e.g. a data: URL, that the page's own scripts may not read)."""
        deadline = time.monotonic() + timeout
        while (frame := self._child_frame(url_prefix)) is None:
            if time.monotonic() > deadline:
                raise BrowserError(f"no frame loading {url_prefix[:40]}… within {timeout:.0f} s")
            self.pump(0.2)
        context = self.send("Page.createIsolatedWorld", frameId=frame,
                            worldName="effdet-check")["executionContextId"]
        result = self.send("Runtime.evaluate", timeout=timeout, expression=expression,
                           contextId=context, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _child_frame(self, url_prefix: str) -> str | None:
        children = self.send("Page.getFrameTree")["frameTree"].get("childFrames", [])
        return next((child["frame"]["id"] for child in children
                     if child["frame"]["url"].startswith(url_prefix)), None)

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"still false after {timeout:.0f} s: {expression}")
            self.pump(0.2)

    def pump(self, seconds: float) -> None:
        """Read events for `seconds` (console errors that arrive after the load)."""
        try:
            self._wait(lambda m: False, seconds, "events")
        except BrowserError as error:
            if "exited" in str(error):
                raise

    def screenshot(self) -> Image.Image:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def close(self) -> None:
        """Ask Chromium to quit; its process group (renderer, zygote) is killed if it lingers."""
        try:
            os.write(self._commands, json.dumps({"id": 0, "method": "Browser.close"}).encode()
                     + b"\0")
            self._process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self._process.pid, 9)
        except ProcessLookupError:
            pass
        self._process.wait(timeout=30)

    def remote_requests(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(LOCAL_SCHEMES)]


def is_blank(image: Image.Image, min_share: float = 0.01) -> bool:
    """True when fewer than `min_share` of the pixels differ from the most common colour
    (the background): an empty or failed page, or one whose content never drew."""
    counts = image.getcolors(maxcolors=image.width * image.height)
    background = max(count for count, _ in counts)
    return 1 - background / (image.width * image.height) < min_share


def _high_fd(fd: int) -> int:
    """A copy of `fd` numbered above 9, closed on exec, so that moving it to 3/4 in the child
    cannot overwrite the other pipe end."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


@contextmanager
def browser(width: int = 1280, height: int = 900) -> Iterator[Page]:
    """A headless Chromium with one page of `width`×`height` CSS pixels, stopped afterwards."""
    binary = chromium()
    to_child, commands = os.pipe()
    events, from_child = os.pipe()
    to_child, from_child = _high_fd(to_child), _high_fd(from_child)

    def pipe_fds() -> None:
        os.dup2(to_child, 3)
        os.dup2(from_child, 4)

    profile = tempfile.mkdtemp(prefix="effdet-chromium-")
    args = [binary, "--headless", "--disable-gpu", "--remote-debugging-pipe",
            f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--mute-audio",
            f"--window-size={width},{height}", "about:blank"]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   preexec_fn=pipe_fds, pass_fds=(3, 4), close_fds=True,
                                   start_new_session=True)
        os.close(to_child)
        os.close(from_child)
        page = Page(process, commands, events)
        try:
            target = page.send("Target.createTarget", url="about:blank")["targetId"]
            page._session = page.send("Target.attachToTarget", targetId=target,
                                      flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                page.send(f"{domain}.enable")
            page.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
            yield page
        except BrowserError:
            log.seek(0)
            print(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            page.close()
            os.close(commands)
            os.close(events)
            shutil.rmtree(profile, ignore_errors=True)
