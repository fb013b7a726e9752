"""Headless Chromium for the report's browser test.

:func:`ensure_chromium` finds Chromium, or installs Debian's ``chromium`` package with
``apt-get`` when running as root (set ``MYOCOHORT_NO_BROWSER_INSTALL=1`` to forbid that), or
says why it cannot.  :class:`Browser` drives it through the DevTools protocol over a
websocket (``websocket-client``): load a page at a given width, collect console errors and
failed loads, evaluate JavaScript, take a screenshot.

Run ``python -m tests.report.browser install`` to install Chromium ahead of the tests
(``make setup-browser``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL = (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends",
                                   "chromium"])
INSTALL_TIMEOUT_S = 900
NO_INSTALL_ENV = "MYOCOHORT_NO_BROWSER_INSTALL"


class BrowserUnavailable(RuntimeError):
    """Chromium is not installed and cannot be installed here (the message says why)."""


def find_chromium() -> str | None:
    """The path of an installed Chromium or Chrome, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def install_chromium() -> str:
    """Install Debian's ``chromium`` with apt-get (root only); returns its path.

    Raises
    ------
    BrowserUnavailable
        Not root, no apt-get, installation forbidden or failed (with apt's last words).
    """
    if os.environ.get(NO_INSTALL_ENV):
        raise BrowserUnavailable(f"chromium is not installed and {NO_INSTALL_ENV} forbids "
                                 "installing it")
    if shutil.which("apt-get") is None:
        raise BrowserUnavailable("chromium is not installed and there is no apt-get to "
                                 "install it (install chromium or google-chrome)")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise BrowserUnavailable("chromium is not installed and installing it needs root: "
                                 "run `sudo apt-get install -y chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in INSTALL:
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                           timeout=INSTALL_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            tail = getattr(e, "stderr", "") or ""
            raise BrowserUnavailable(f"`{' '.join(cmd)}` failed: {e}; "
                                     f"{tail.strip()[-300:]}") from e
    path = find_chromium()
    if path is None:
        raise BrowserUnavailable("apt-get installed chromium but no chromium is on PATH")
    return path


def ensure_chromium() -> str:
    """An installed Chromium, installed now if need be (see :func:`install_chromium`)."""
    return find_chromium() or install_chromium()


class Browser:
    """One headless Chromium with one page, driven over the DevTools protocol.

    Use as a context manager; :meth:`load` opens a URL at a viewport width, :attr:`errors`
    then lists console errors, uncaught exceptions and resources that failed to load.
    """

    def __init__(self, executable: str, width: int = 1280, height: int = 900) -> None:
        self.executable = executable
        self.width, self.height = width, height
        self.events: list[dict] = []
        self._id = 0

    def __enter__(self) -> Browser:
        import websocket  # websocket-client

        self._profile = tempfile.TemporaryDirectory(prefix="myocohort-chromium-")
        args = [self.executable, "--headless=new", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
                "--remote-debugging-port=0", "--remote-allow-origins=*",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={self.width},{self.height}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True)
        port = self._devtools_port()
        target = self._page_target(port)
        self._ws = websocket.create_connection(target, timeout=60, suppress_origin=True)
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.send(method)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                   "mobile": False})
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._ws.close()
        except Exception:  # closing a broken socket: the process is ended below anyway
            pass
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._profile.cleanup()

    def _devtools_port(self, timeout: float = 30.0) -> int:
        end = time.monotonic() + timeout
        assert self._proc.stderr is not None
        lines = []
        while time.monotonic() < end:
            line = self._proc.stderr.readline()
            if not line and self._proc.poll() is not None:
                break
            lines.append(line)
            if "DevTools listening on ws://" in line:
                return int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        raise RuntimeError("chromium did not start its DevTools server: "
                           + "".join(lines[-10:]).strip())

    def _page_target(self, port: int) -> str:
        for _ in range(50):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise RuntimeError("chromium opened no page")

    def send(self, method: str, params: dict | None = None, timeout: float = 120.0) -> dict:
        """Call a DevTools method and wait for its result (events are kept meanwhile)."""
        self._id += 1
        mid = self._id
        self._ws.send(json.dumps({"id": mid, "method": method, "params": params or {}}))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"{method}: no answer in {timeout} s")

    def wait_for(self, event: str, timeout: float = 120.0) -> dict:
        for i, e in enumerate(self.events):
            if e["method"] == event:
                return self.events.pop(i)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = json.loads(self._ws.recv())
            if msg.get("method") == event:
                return msg
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"no {event} in {timeout} s")

    def load(self, url: str) -> None:
        """Navigate to ``url`` and wait for its load event."""
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (promises awaited)."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions, failed loads and error log entries so far."""
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails', {}).get('text', p)}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                  for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                out.append(f"load failed: {p.get('errorText')} ({p.get('type')})")
        return out

    def screenshot(self, path: Path) -> None:
        """A PNG of the whole page."""
        import base64

        r = self.send("Page.captureScreenshot", {"format": "png",
                                                  "captureBeyondViewport": True})
        Path(path).write_bytes(base64.b64decode(r["data"]))


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        print("usage: python -m tests.report.browser install", file=sys.stderr)
        sys.exit(2)
    try:
        print(ensure_chromium())
    except BrowserUnavailable as e:
        print(f"cannot install chromium: {e}", file=sys.stderr)
        sys.exit(1)
