"""The dashboard in a real headless Chromium: no JavaScript errors, every figure drawn, not blank."""

from __future__ import annotations

import io
import re

import pytest
from test_report import make_results, record  # tests/ is on sys.path (pytest's prepend import mode)

from ranksearch.browser import find_chromium, is_blank, render_page
from ranksearch.report import figures, write_report

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="no Chrome/Chromium found: apt-get install chromium, or set RANKSEARCH_CHROMIUM"
)


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
