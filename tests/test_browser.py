"""ranksearch.render.browser: headless Chromium renders pages, reports their JavaScript errors, screenshots them."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from ranksearch.render import _chromium, browser
from ranksearch.render.browser import BrowserError, BrowserUnavailable, find_chromium, is_blank, render_page, screenshot

needs_browser = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chrome/Chromium found: apt-get install chromium, or set RANKSEARCH_CHROMIUM",
)

pytestmark = pytest.mark.slow  # a real headless Chromium in most tests

PLOT_DIV = re.compile(r'<div[^>]*\bclass="[^"]*\bplotly-graph-div\b[^"]*\bjs-plotly-plot\b')


def _write(path: Path, body: str, head: str = "") -> Path:
    path.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8">{head}</head><body>{body}</body></html>')
    return path


def _figures():
    go = pytest.importorskip("plotly.graph_objects")
    line = go.Figure(go.Scatter(x=[1, 2, 3, 4], y=[3, 1, 4, 2], mode="lines+markers"))
    bars = go.Figure(go.Bar(x=["svd", "cp", "tucker2"], y=[2, 5, 3]))
    return line, bars


def _colours(png: bytes) -> int:
    with Image.open(io.BytesIO(png)) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 24))


@pytest.fixture(scope="module")
def one_figure(tmp_path_factory):
    """A page written by plotly's own write_html, plotly.js inlined (no CDN), rendered once."""
    line, _ = _figures()
    path = tmp_path_factory.mktemp("page") / "figure.html"
    line.write_html(path, include_plotlyjs=True)
    start = time.perf_counter()
    render = render_page(path)
    return render, time.perf_counter() - start


# --- finding the browser (no browser needed) ---------------------------------------------------------


def test_find_chromium_prefers_ranksearch_chromium(monkeypatch):
    monkeypatch.setenv("RANKSEARCH_CHROMIUM", "/opt/mine/chrome")
    monkeypatch.setenv("BROWSER_PATH", "/opt/kaleido/chrome")
    assert find_chromium() == "/opt/mine/chrome"
    monkeypatch.delenv("RANKSEARCH_CHROMIUM")
    assert find_chromium() == "/opt/kaleido/chrome"


def test_find_chromium_searches_path(monkeypatch):
    monkeypatch.delenv("RANKSEARCH_CHROMIUM", raising=False)
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(_chromium.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "google-chrome" else None)
    assert find_chromium() == "/usr/bin/google-chrome"


def test_find_chromium_falls_back_on_kaleidos_lookup(monkeypatch):
    """Nothing named and nothing on PATH: choreographer's places (kaleido_get_chrome's copy, install paths)."""
    monkeypatch.delenv("RANKSEARCH_CHROMIUM", raising=False)
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(_chromium.shutil, "which", lambda name: None)
    monkeypatch.setattr(_chromium, "_choreographer_lookup", lambda: "/opt/downloaded/chrome")
    assert find_chromium() == "/opt/downloaded/chrome"


def test_no_browser_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("RANKSEARCH_CHROMIUM", raising=False)
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(_chromium.shutil, "which", lambda name: None)
    monkeypatch.setattr(_chromium, "_choreographer_lookup", lambda: None)
    assert find_chromium() is None
    page = _write(tmp_path / "page.html", "<p>hi</p>")
    with pytest.raises(BrowserUnavailable, match=r"no Chrome/Chromium found: install .*apt-get install chromium"):
        render_page(page)


def test_browser_that_is_not_there(monkeypatch, tmp_path):
    monkeypatch.setenv("RANKSEARCH_CHROMIUM", str(tmp_path / "no-such-chrome"))
    with pytest.raises(BrowserUnavailable, match="no-such-chrome is not an executable file"):
        render_page(_write(tmp_path / "page.html", "<p>hi</p>"))


def test_missing_page_is_a_clear_error(tmp_path):
    with pytest.raises(BrowserError, match=r"HTML file not found: .*nowhere\.html"):
        render_page(tmp_path / "nowhere.html")


def test_is_blank():
    def png(image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    white = Image.new("RGB", (64, 48), "white")
    assert is_blank(png(white))
    white.putpixel((10, 10), (250, 250, 250))
    assert is_blank(png(white))  # within tolerance
    white.putpixel((20, 20), (0, 0, 255))
    assert not is_blank(png(white))
    assert not is_blank(png(white), tolerance=200) and is_blank(png(white), tolerance=255)


# --- rendering ------------------------------------------------------------------------------------


@needs_browser
def test_plotly_page_renders_without_errors(one_figure):
    render, seconds = one_figure
    assert render.errors == []
    assert len(PLOT_DIV.findall(render.dom)) == 1
    assert "<svg" in render.dom and "scatterlayer" in render.dom  # plotly drew it: the script ran
    assert not is_blank(render.screenshot)
    assert _colours(render.screenshot) > 50  # axes, grid, anti-aliased line, not a flat fill
    with Image.open(io.BytesIO(render.screenshot)) as image:
        assert image.size == (1400, 1000)
    assert seconds < 30


@needs_browser
def test_two_figures_share_one_plotly_js(tmp_path):
    line, bars = _figures()
    body = line.to_html(full_html=False, include_plotlyjs=True) + bars.to_html(full_html=False, include_plotlyjs=False)
    page = _write(tmp_path / "two.html", body)
    assert page.read_text().count("Copyright 2012-") == 1  # plotly.js inlined once
    render = render_page(page, width=900, height=700)
    assert render.errors == []
    assert len(PLOT_DIV.findall(render.dom)) == 2
    assert "scatterlayer" in render.dom and "barlayer" in render.dom
    assert not is_blank(render.screenshot)


@needs_browser
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<script>undefinedFunction()</script>", r"^Uncaught ReferenceError: undefinedFunction is not defined"),
        ("<script>console.error('x', 42)</script>", r"^console\.error: x 42 \(file://.*:1\)$"),
        (
            "<script>Promise.reject(new Error('nobody caught me'))</script>",
            r"^Uncaught \(in promise\).*nobody",
        ),
        ("<script>setTimeout(() => { throw new TypeError('later') }, 20)</script>", r"TypeError: later"),
    ],
    ids=["throw", "console-error", "rejected-promise", "throw-in-timer"],
)
def test_javascript_errors_are_reported(tmp_path, body, expected):
    render = render_page(
        _write(tmp_path / "bad.html", "<p>text</p><script>console.log('not an error')</script>" + body)
    )
    assert len(render.errors) == 1, render.errors
    assert re.search(expected, render.errors[0]), render.errors


# the dashboard's kind of hook: records errors in window.__ranksearchErrors and shows them in a <pre>
HOOK = """<script>
window.__ranksearchErrors = ['recorded before the browser could see it'];
function record(message) { window.__ranksearchErrors.push(String(message)); }
window.addEventListener('error', e => record(e.message));
window.addEventListener('unhandledrejection', e => record('unhandled rejection: ' + e.reason));
const consoleError = console.error;
console.error = (...args) => { record(args.join(' ')); consoleError(...args); };
</script>"""
BAD_SCRIPTS = (
    "<script>missingFunction()</script>"
    "<script>console.error('x', 42)</script>"
    "<script>Promise.reject(new Error('nobody caught me'))</script>"
)


@needs_browser
def test_dashboard_error_hook_is_merged(tmp_path):
    """Errors the page's own hook recorded are added, without repeating those the browser reported."""
    errors = render_page(_write(tmp_path / "hooked.html", BAD_SCRIPTS, head=HOOK)).errors
    assert len(errors) == 4, errors
    assert errors[0].startswith("Uncaught ReferenceError: missingFunction is not defined (file://")
    assert errors[1].startswith("console.error: x 42 (file://")
    assert errors[2].startswith("Uncaught (in promise) Error: nobody caught me (file://")
    assert errors[3] == "recorded before the browser could see it"


@needs_browser
def test_dashboard_error_element_is_read(tmp_path):
    """Without window.__ranksearchErrors, the <pre> the hook writes to is read from the DOM."""
    pre = '<pre id="ranksearch-js-errors">Error: first &amp; worst\nmissingFunction is not defined\n</pre>'
    errors = render_page(_write(tmp_path / "pre.html", pre + "<script>missingFunction()</script>")).errors
    assert len(errors) == 2, errors
    assert "missingFunction" in errors[0] and errors[1] == "Error: first & worst"


@needs_browser
def test_webgl_figure_renders(tmp_path):
    """3-D scatter and parallel coordinates draw with WebGL: software (SwiftShader) WebGL must work."""
    go = pytest.importorskip("plotly.graph_objects")
    cloud = go.Figure(go.Scatter3d(x=[1, 2, 3], y=[3, 1, 2], z=[1, 1, 2], mode="markers"))
    cloud.update_layout(width=400, height=300, margin=dict(l=0, r=0, t=0, b=0))
    page = tmp_path / "gl.html"
    cloud.write_html(page, include_plotlyjs=True)
    render = render_page(page, width=400, height=300)
    assert render.errors == []
    assert "<canvas" in render.dom and 'class="no-webgl"' not in render.dom
    with Image.open(io.BytesIO(render.screenshot)) as image:
        middle = image.crop((100, 75, 300, 225))  # the scene's floor and walls: drawn only by WebGL
        assert len(middle.convert("RGB").getcolors(maxcolors=1 << 24)) > 5


@needs_browser
def test_empty_page_is_blank(tmp_path):
    render = render_page(_write(tmp_path / "empty.html", ""), width=300, height=200)
    assert render.errors == []
    assert is_blank(render.screenshot)
    with Image.open(io.BytesIO(render.screenshot)) as image:
        assert image.size == (300, 200) and image.convert("RGB").getpixel((150, 100)) == (255, 255, 255)


@needs_browser
def test_screenshot_full_page_and_fixed_height(tmp_path):
    stripes = "".join(f'<div style="height:400px;background:hsl({i * 60},80%,50%)"></div>' for i in range(6))
    page = _write(tmp_path / "long.html", stripes, head="<style>body { margin: 0 }</style>")
    out = screenshot(page, tmp_path / "shots" / "full.png", width=500)
    with Image.open(out) as image:
        assert image.size == (500, 6 * 400)  # the whole page, taller than the viewport
        assert image.convert("RGB").getpixel((250, 2300))[2] > 150  # the last (blue-violet) stripe is there
    out = screenshot(page, tmp_path / "top.png", width=500, height=300)
    with Image.open(out) as image:
        assert image.size == (500, 300)


@needs_browser
def test_hung_page_times_out(tmp_path):
    page = _write(tmp_path / "hang.html", "<script>while (true) {}</script>")
    start = time.perf_counter()
    with pytest.raises(BrowserError, match=r"no answer .* within 2 s: raise the timeout"):
        render_page(page, timeout=2)
    assert time.perf_counter() - start < 15


@needs_browser
def test_missing_webgl_is_an_error(tmp_path, monkeypatch):
    """Without WebGL plotly draws a notice in place of a 3-D figure and throws nothing: reported all the same."""
    go = pytest.importorskip("plotly.graph_objects")
    page = tmp_path / "gl.html"
    go.Figure(go.Scatter3d(x=[1, 2], y=[2, 1], z=[1, 2])).write_html(page, include_plotlyjs=True)
    flags = browser._flags
    monkeypatch.setattr(browser, "_flags", lambda profile: [*flags(profile), "--disable-webgl"])
    errors = render_page(page, width=400, height=300).errors
    assert errors == ["plotly: 1 figure(s) not drawn: this browser has no WebGL"]
