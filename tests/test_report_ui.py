"""The segment report (issue 10 §1) in a real browser: `dvc repro` on the tests' sample data, then
``reports/segments.html`` opened from disk in headless Chromium (Debian's package) with the network off.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no port, no websocket
library): every request the page makes, every console message and exception is seen. The page must render its
tables and images (each image decoded, ``naturalWidth > 0``), make no request but to itself and its inline data, and
log no error. A full-page screenshot is kept in test-artifacts/segments.png (git-ignored).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline_helpers import paths
from test_report import script_page
from test_ui import ARTIFACTS, chromium  # noqa: F401 (the session fixture: skips without Chromium)

# Not marked `ui`: the fast suite (`make test`) opens the report in Chromium too.

OFFLINE = [
    "--proxy-server=127.0.0.1:9",  # the discard port: nothing listens there
    "--host-resolver-rules=MAP * ~NOTFOUND",  # and no name resolves
]


@pytest.fixture
def project(trained_project):
    """A project copy on the tests' params and sample data (less the rows held back for scoring), after one
    ``dvc repro``."""
    return trained_project


class DevTools:
    """Chromium's DevTools protocol over ``--remote-debugging-pipe`` (fd 3: commands in, fd 4: messages out, each
    JSON message ended by a NUL byte)."""

    def __init__(self, chromium_path: str, profile: Path, extra: list[str]):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:  # in the child, before exec: the pipe ends on fds 3 and 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        cmd = [
            chromium_path, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-features=Translate,OptimizationHints,MediaRouter", "--lang=en-US",
            "--window-size=1300,1000", "--remote-debugging-pipe", *extra, "about:blank",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire,  # only dup2: safe between fork and exec
            pass_fds=(3, 4),
            start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the browser and its helpers (zygote, renderers)
        self.proc.wait(timeout=30)

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            assert left > 0, "no answer from Chromium over the DevTools pipe in time"
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                assert chunk, "Chromium closed the DevTools pipe"
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        """A command; its result (events that arrive meanwhile are kept in ``events``)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event


PAGE_CHECK = """(() => {
  const imgs = [...document.images];
  return JSON.stringify({
    images: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
    tables: document.querySelectorAll('table').length,
    rows: document.querySelectorAll('tr').length,
    cards: [...document.querySelectorAll('.card h3')].map(h => h.textContent),
    text: document.body.innerText,
    height: document.documentElement.scrollHeight,
  });
})()"""


def test_report_renders_offline_in_chromium(project, chromium, tmp_path):  # noqa: F811
    root, _ = project
    page = root / paths()["report"]
    source = page.read_text(encoding="utf-8")
    # Self-contained: no URL at all, every src/href inline.
    assert not re.search(r"https?://", source)
    assert not re.search(r"""\b(src|href)\s*=\s*(?!["']?data:)""", source)

    browser = DevTools(chromium, tmp_path / "profile", OFFLINE)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": page.as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        state = json.loads(
            browser.send("Runtime.evaluate", {"expression": PAGE_CHECK, "returnByValue": True}, session=session)[
                "result"
            ]["value"]
        )
        shot = browser.send(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session, timeout=120
        )
    finally:
        browser.close()

    events = browser.events
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    failed = [e["params"] for e in events if e.get("method") == "Network.loadingFailed"]
    console = [
        e["params"]
        for e in events
        if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")
    ]
    exceptions = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
    log_errors = [e["params"]["entry"] for e in events if e.get("method") == "Log.entryAdded"]
    log_errors = [entry for entry in log_errors if entry["level"] == "error"]

    assert requests and all(url.startswith(("file:", "data:")) for url in requests), requests
    assert failed == [] and console == [] and exceptions == [] and log_errors == []
    assert state["images"] == 4 and state["broken"] == []  # heatmap, elbow, 2-D view, silhouette: decoded
    assert state["tables"] >= 4 and state["rows"] > 30
    assert len(state["cards"]) == len(set(state["cards"])) >= 2  # one named segment per cluster, names unique
    for words in ("Customer segments", "All customers", "Response", "MntWines", "How the number of segments",
                  "Silhouette", "params behind this report"):  # fmt: skip
        assert words in state["text"], words
    assert re.search(r"\d{1,3},\d{3}", state["text"])  # money with thousands separators

    ARTIFACTS.mkdir(exist_ok=True)
    png = base64.b64decode(shot["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    (ARTIFACTS / "segments.png").write_bytes(png)


def test_user_text_shows_as_text_and_no_script_runs_in_chromium(chromium, tmp_path):  # noqa: F811
    """A category, a column name and a label ``<script>alert(1)</script>``: shown literally, nothing runs; the
    provenance folded away."""
    page = tmp_path / "segments.html"
    page.write_text(script_page(), encoding="utf-8")
    browser = DevTools(chromium, tmp_path / "profile", OFFLINE)
    check = """JSON.stringify({scripts: document.scripts.length, text: document.body.innerText,
      details: [...document.querySelectorAll('details')].map(d => [d.open, d.querySelector('summary').textContent])})"""
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": page.as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        reply = browser.send("Runtime.evaluate", {"expression": check, "returnByValue": True}, session=session)
        state = json.loads(reply["result"]["value"])
    finally:
        browser.close()
    ran = [e for e in browser.events if e.get("method") in ("Page.javascriptDialogOpening", "Runtime.exceptionThrown")]
    assert ran == [] and state["scripts"] == 0
    assert state["text"].count("<script>alert(1)</script>") >= 3  # card, table row, category share
    assert state["details"] == [[False, "The data and the 2 params behind this report"]]
