"""Open an HTML file in headless Chrome/Chromium: the DOM after scripts ran, JavaScript errors, a PNG.

Used to check that the dashboard renders (no JavaScript errors, every figure drawn) and to take the
README screenshot. No Python dependency: the browser is driven over the Chrome DevTools Protocol on
``--remote-debugging-pipe`` (null-terminated JSON on file descriptors 3 and 4 of the browser). Which
browser: :func:`find_chromium` (``$RANKSEARCH_CHROMIUM`` first), the same one static images use.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RanksearchError
from ._chromium import executable, find_chromium
from ._page_errors import HOOK_JS, errors_element, event_errors, exception_text, merge

__all__ = [
    "BrowserError",
    "BrowserUnavailable",
    "PageRender",
    "find_chromium",
    "is_blank",
    "render_page",
    "screenshot",
]

MAX_HEIGHT = 16_384  # Chrome's largest texture: taller full-page screenshots come back cut or blank
SETTLE_MS = 150  # after the load event: plotly's deferred work, late promise rejections, resize handlers


class BrowserError(RanksearchError):
    """The browser failed: it crashed, timed out, or could not open the page."""


class BrowserUnavailable(BrowserError):
    """No Chrome/Chromium executable was found."""


@dataclass(frozen=True)
class PageRender:
    """What a page looked like once its scripts ran."""

    dom: str  # the serialized DOM (doctype + <html>), after scripts ran
    errors: list[str]  # uncaught exceptions, unhandled rejections, console.error, failed loads, no WebGL
    screenshot: bytes  # PNG


def render_page(
    html_path: str | os.PathLike[str],
    *,
    width: int = 1400,
    height: int = 1000,
    timeout: float = 60.0,
    full_page: bool = False,
) -> PageRender:
    """Load ``html_path`` in a width x height viewport; ``full_page`` screenshots the whole page height."""
    path = Path(html_path)
    if not path.is_file():
        raise BrowserError(f"HTML file not found: {path}")
    with _Browser(timeout) as browser:
        session = browser.open_page(width, height)
        browser.load(session, path.resolve().as_uri())
        dom = browser.evaluate(session, _DOM_JS)
        hook = browser.evaluate(session, HOOK_JS)
        no_webgl = browser.evaluate(session, "document.querySelectorAll('.no-webgl').length")
        if full_page:
            page_height = browser.evaluate(session, _HEIGHT_JS)
            browser.resize(session, width, max(1, min(int(page_height), MAX_HEIGHT)))
        png = browser.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
        errors = merge(event_errors(browser.events), hook or errors_element(dom))
    if no_webgl:  # plotly draws a notice instead of the figure, and raises nothing
        errors.append(f"plotly: {no_webgl} figure(s) not drawn: this browser has no WebGL")
    return PageRender(dom=dom, errors=errors, screenshot=base64.b64decode(png))


def screenshot(
    html_path: str | os.PathLike[str],
    png_path: str | os.PathLike[str],
    *,
    width: int = 1400,
    height: int | None = None,
    timeout: float = 60.0,
) -> Path:
    """Write a PNG of ``html_path`` to ``png_path``: the whole page, or the top ``height`` pixels."""
    render = render_page(html_path, width=width, height=height or 1000, timeout=timeout, full_page=height is None)
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(render.screenshot)
    return out


def is_blank(png: bytes, *, tolerance: int = 8) -> bool:
    """True when every pixel is within ``tolerance`` (0-255, per channel) of one colour."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        extrema = image.convert("RGB").getextrema()
    return all(high - low <= tolerance for low, high in extrema)


# --- JavaScript evaluated in the page --------------------------------------------------------------

_DOM_JS = (
    "(document.doctype ? new XMLSerializer().serializeToString(document.doctype) : '')"
    " + document.documentElement.outerHTML"
)
_HEIGHT_JS = (  # the content's height: scrollHeight alone is never less than the viewport's
    "Math.ceil(Math.max(document.documentElement.getBoundingClientRect().height,"
    " document.body ? document.body.scrollHeight : 0))"
)
_SETTLE_JS = (
    f"new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(done, {SETTLE_MS}))))"
)


# --- the browser -----------------------------------------------------------------------------------


class _Browser:
    """One headless browser process with a throwaway profile, spoken to over the DevTools pipe."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.buffer = b""

    def __enter__(self) -> _Browser:
        path = find_chromium()
        if path is None:
            raise BrowserUnavailable(
                "no Chrome/Chromium found: install the distribution's chromium package (apt-get install chromium)"
                " or set RANKSEARCH_CHROMIUM"
            )
        if executable(path) is None:
            raise BrowserUnavailable(
                f"{path} is not an executable file: fix RANKSEARCH_CHROMIUM / BROWSER_PATH or unset them"
            )
        self.tmp = tempfile.TemporaryDirectory(prefix="ranksearch-chromium-", ignore_cleanup_errors=True)
        self.log = open(os.path.join(self.tmp.name, "stderr.log"), "wb")  # closed in _close_fds
        to_child, self.to_browser = _pipe()
        self.from_browser, from_child = _pipe()

        def place_fds() -> None:  # in the child, before exec: the protocol's fds 3 (commands) and 4 (replies)
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        try:
            self.process = subprocess.Popen(
                [path, *_flags(os.path.join(self.tmp.name, "profile"))],
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=self.log,
                preexec_fn=place_fds,
                close_fds=False,  # True would close fds 3 and 4 after place_fds; every other fd is close-on-exec
                start_new_session=True,
            )
        except OSError as exc:
            self._close_fds()
            raise BrowserUnavailable(f"cannot start {path}: {exc}: set RANKSEARCH_CHROMIUM to a working one") from exc
        finally:
            os.close(to_child)
            os.close(from_child)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(BrowserError, OSError):
            self.send("Browser.close", deadline=time.monotonic() + 5)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)
            self.process.wait()
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self.to_browser, self.from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.log.close()
        self.tmp.cleanup()

    # --- protocol ---

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None, *, deadline: float = 0
    ) -> dict[str, Any]:
        """Send one command and wait for its reply; events read meanwhile are kept in ``self.events``."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self.to_browser, data) :]
        except BrokenPipeError:
            raise self._died(f"{method}") from None
        while True:
            reply = self._read(deadline or self.deadline, method)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrowserError(f"browser refused {method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> dict[str, Any]:
        """Wait for the event ``method`` of ``session`` (it may already have come)."""
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            self.events.append(self._read(self.deadline, method))

    def _read(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_browser], [], [], left)[0]:
                raise BrowserError(
                    f"the browser gave no answer to {waiting_for} within {self.timeout:g} s: raise the timeout"
                )
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise self._died(waiting_for)
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message = json.loads(raw)
        if message.get("method") in ("Inspector.targetCrashed", "Target.targetCrashed"):
            raise BrowserError(f"the page crashed while waiting for {waiting_for}")
        return message

    def _died(self, waiting_for: str) -> BrowserError:
        self.log.flush()
        lines = Path(self.log.name).read_text(errors="replace").splitlines()
        useful = [line for line in lines if "ERROR" in line and "dbus" not in line] or lines
        detail = useful[-1].strip() if useful else f"exit status {self.process.poll()}"
        return BrowserError(f"the browser exited during {waiting_for}: {detail}")

    # --- page ---

    def open_page(self, width: int, height: int) -> str:
        """A new blank tab of width x height CSS pixels, with errors recorded; returns its session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.resize(session, width, height, settle=False)
        return session

    def resize(self, session: str, width: int, height: int, *, settle: bool = True) -> None:
        params = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", params, session)
        if settle:
            self.evaluate(session, _SETTLE_JS)

    def load(self, session: str, url: str) -> None:
        """Navigate, wait for the load event, then for two frames and SETTLE_MS more."""
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        result = self.send("Page.navigate", {"url": url}, session)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self.wait_for("Page.loadEventFired", session)
        self.evaluate(session, _SETTLE_JS)

    def evaluate(self, session: str, expression: str) -> Any:
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self.send("Runtime.evaluate", params, session)
        if "exceptionDetails" in result:
            raise BrowserError(
                f"evaluating {expression[:40]!r}... failed: {exception_text(result['exceptionDetails'])}"
            )
        return result["result"].get("value")


def _pipe() -> tuple[int, int]:
    """A pipe whose two (close-on-exec) ends are above fd 4, so that ``place_fds`` cannot clobber one."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5))
        os.close(fd)
    return ends[0], ends[1]


def _flags(profile: str) -> list[str]:
    flags = [
        "--headless",  # the new headless mode since Chrome 132 (the old one before): no window, same engine
        "--remote-debugging-pipe",  # DevTools protocol on fds 3/4, no port to find or collide on
        f"--user-data-dir={profile}",  # a throwaway profile: runs share no state
        "--disable-gpu",  # software rendering: the same pixels on every machine
        "--enable-unsafe-swiftshader",  # WebGL (3-D scatter, parcoords) on SwiftShader: no longer automatic
        "--disable-dev-shm-usage",  # small /dev/shm in containers crashes the renderer
        "--hide-scrollbars",  # screenshots without a scrollbar strip
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--mute-audio",
        "--force-color-profile=srgb",
        "--allow-file-access-from-files",  # a page may load files next to it
        "about:blank",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.insert(0, "--no-sandbox")  # Chromium refuses to start as root with its sandbox on
    return flags
