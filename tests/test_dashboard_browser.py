"""The dashboard in a real headless Chromium: no JavaScript errors, every figure drawn, not blank."""

from __future__ import annotations

import io
import re

import plotly.graph_objects as go
import pytest
from _records import NUMERIC_NAMES, make_results, numeric_named_results, record  # tests/ is on sys.path

from ranksearch.render.browser import find_chromium, is_blank, render_page
from ranksearch.report import figures, write_report

pytestmark = [
    pytest.mark.slow,  # a real browser renders the whole dashboard
    pytest.mark.skipif(
        find_chromium() is None, reason="no Chrome/Chromium found: apt-get install chromium, or set RANKSEARCH_CHROMIUM"
    ),
]


def test_the_dashboard_renders_every_figure_without_javascript_errors(tmp_path):
    records = [record(0, 0.95, 1.0, 1.0, methods=("dense",) * 3)]
    records += [record(i, 0.5 + 0.04 * i, 0.1 * i, 0.12 * i, methods=("svd", "tt", "cp")) for i in range(1, 10)]
    results = make_results(records, objectives=("accuracy", "macs", "params"))  # 3-D and WebGL figures too
    files = write_report(results, tmp_path, screenshot=tmp_path / "shot.png")
    page = render_page(files.html, full_page=True)
    assert page.errors == []
    expected = len(figures(results))
    assert expected == 7
    drawn = re.findall(r'<div[^>]*class="[^"]*js-plotly-plot[^"]*"', page.dom)  # plotly marks drawn divs
    assert len(drawn) == expected
    assert page.dom.count('class="main-svg"') >= expected  # each figure has its SVG layers
    assert not is_blank(page.screenshot)
    assert files.screenshot is not None and not is_blank(files.screenshot.read_bytes())
    assert files.notes == [] or all("pyarrow" in n for n in files.notes)
    from PIL import Image

    width, height = Image.open(io.BytesIO(page.screenshot)).size
    assert width == 1400 and height > 3000  # the full page, all figures stacked


def test_numeric_looking_layer_names_are_drawn_as_written(tmp_path):
    """The heatmap's layer ticks and the parallel-coordinates axis titles read "0.0", "3", "10", not 0, 2, 4...

    Without the template (whose autotypenumbers="strict" would hide a missing category type), so that
    the figure's own axis type is what is checked.
    """
    figs = figures(numeric_named_results())
    drawn = {}
    for name in ("layers", "parallel"):
        fig = go.Figure(figs[name]).update_layout(template=None)
        fig.write_html(tmp_path / f"{name}.html", include_plotlyjs=True)
        page = render_page(tmp_path / f"{name}.html", width=900, height=500)
        assert page.errors == []
        drawn[name] = page.dom
    ticks = re.findall(r'<g class="xtick">.*?<text[^>]*>([^<]*)</text>', drawn["layers"])
    assert ticks == list(NUMERIC_NAMES)
    titles = re.findall(r'<text[^>]*class="axis-title"[^>]*>([^<]*)</text>', drawn["parallel"])
    assert titles == [*NUMERIC_NAMES, "accuracy"]
