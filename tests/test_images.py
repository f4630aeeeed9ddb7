"""Static image export through kaleido: argument checks everywhere, real renders where kaleido and Chrome are."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import plotly.graph_objects as go
import pytest

from ranksearch.errors import RanksearchError
from ranksearch.render import browser, images
from ranksearch.render.images import (
    FORMATS,
    ImageExportError,
    StaticExportUnavailable,
    static_export_unavailable,
    write_images,
)

pytestmark = pytest.mark.slow  # kaleido drives a real browser

UNAVAILABLE = static_export_unavailable()
needs_export = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no static export here: {UNAVAILABLE}")


def _kaleido_installed() -> bool:
    try:
        images._import_kaleido()
    except ImportError:
        return False
    return True


needs_kaleido = pytest.mark.skipif(not _kaleido_installed(), reason="kaleido is not installed")


def _figures() -> dict[str, go.Figure]:
    line = go.Figure(go.Scatter(x=[0, 1, 2, 3], y=[3, 1, 2, 0], mode="lines+markers"), layout_title_text="line")
    bars = go.Figure(go.Bar(x=["a", "b", "c"], y=[2, 5, 3]), layout_title_text="bars")
    return {"line": line, "bars": bars}


def _browser_children() -> list[str]:
    """Chrome processes descending from this one (Linux /proc), to check the browser was closed."""
    procs: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            procs[int(entry.name)] = (int(stat[stat.rindex(")") + 2 :].split()[1]), stat[stat.index("(") + 1 :])
    mine, grew = {os.getpid()}, True
    while grew:
        before = len(mine)
        mine |= {pid for pid, (ppid, _) in procs.items() if ppid in mine}
        grew = len(mine) > before
    return [procs[pid][1] for pid in mine if pid != os.getpid() and "chrom" in procs[pid][1].lower()]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """One batch: two figures × PNG and SVG at 320×240, scale 1.5 (one browser start for all four)."""
    if UNAVAILABLE is not None:
        pytest.skip(f"no static export here: {UNAVAILABLE}")
    folder = tmp_path_factory.mktemp("images") / "out"  # not there yet: write_images creates it
    return folder, write_images(_figures(), folder, ("png", "svg"), width=320, height=240, scale=1.5)


@needs_export
def test_png_is_a_non_blank_image_of_the_requested_size(rendered: tuple[Path, list[Path]]) -> None:
    from PIL import Image

    folder, _ = rendered
    for name in ("line", "bars"):
        with Image.open(folder / f"{name}.png") as img:
            assert img.format == "PNG"
            assert img.size == (480, 360)  # 320×240 layout pixels × scale 1.5
            colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 10, "the PNG is (nearly) a single colour"


@needs_export
def test_svg_is_svg(rendered: tuple[Path, list[Path]]) -> None:
    folder, _ = rendered
    text = (folder / "line.svg").read_text(encoding="utf-8")
    assert "<svg" in text
    assert 'width="320"' in text


@needs_export
def test_several_figures_and_formats_in_one_call(rendered: tuple[Path, list[Path]]) -> None:
    folder, paths = rendered
    assert paths == [folder / n for n in ("line.png", "line.svg", "bars.png", "bars.svg")]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)  # no temporary files left
    assert _browser_children() == []


@needs_export
def test_other_formats_default_size_and_a_running_event_loop(tmp_path: Path) -> None:
    from PIL import Image

    fig = go.Figure(go.Scatter(y=[1, 3, 2]), layout={"width": 300, "height": 200})

    async def caller() -> list[Path]:  # e.g. Jupyter: write_images must not need the caller's loop
        return write_images({"sized": fig}, tmp_path, ("jpeg", "webp", "pdf"), scale=1)

    jpeg, webp, pdf = asyncio.run(caller())
    for path, fmt in ((jpeg, "JPEG"), (webp, "WEBP")):
        with Image.open(path) as img:
            assert (img.format, img.size) == (fmt, (300, 200))  # the figure's own layout size
    assert pdf.read_bytes().startswith(b"%PDF")


@needs_export
def test_a_failing_render_names_the_figure_and_closes_the_browser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kaleido = images._import_kaleido()

    async def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("boom")

    monkeypatch.setattr(kaleido.Kaleido, "calc_fig", broken)
    (tmp_path / "line.png").write_bytes(b"old")
    with pytest.raises(ImageExportError, match=r"^could not render figure 'line' as png: RuntimeError: boom$"):
        write_images(_figures(), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["line.png"]  # no temporary file left
    assert (tmp_path / "line.png").read_bytes() == b"old"  # and the old image untouched
    assert _browser_children() == []


def test_bad_format_lists_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ImageExportError, match=r"^unknown image format 'gif': choose from png, svg, pdf, jpeg, webp$"):
        write_images(_figures(), tmp_path, ("png", "gif"))
    with pytest.raises(ImageExportError, match="unknown image format 'jpg'"):
        write_images(_figures(), tmp_path, "jpg")
    with pytest.raises(ImageExportError, match="no image format given"):
        write_images(_figures(), tmp_path, ())
    assert FORMATS == ("png", "svg", "pdf", "jpeg", "webp")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["", "../up", "a/b", "a\\b", ".hidden", "ends.", "with space", "x" * 101, 7])
def test_unsafe_names_are_refused(tmp_path: Path, name: object) -> None:
    with pytest.raises(ImageExportError, match="is not a safe file name"):
        write_images({name: go.Figure()}, tmp_path)  # type: ignore[dict-item]


def test_names_that_differ_only_in_case_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageExportError, match="'Front' and 'front' differ only in case"):
        write_images({"Front": go.Figure(), "front": go.Figure()}, tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 0}, "width must be an int >= 10"),
        ({"height": 12.5}, "height must be an int >= 10"),
        ({"width": True}, "width must be an int >= 10"),
        ({"scale": 0}, "scale must be a number > 0"),
        ({"scale": float("nan")}, "scale must be a number > 0"),
        ({"scale": "2"}, "scale must be a number > 0"),
    ],
)
def test_bad_sizes_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ImageExportError, match=message):
        write_images(_figures(), tmp_path, **kwargs)


def test_a_non_figure_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageExportError, match="figure 'x' is a list, not a plotly Figure"):
        write_images({"x": [1, 2]}, tmp_path)  # type: ignore[dict-item]


def test_no_figures_writes_nothing(tmp_path: Path) -> None:
    assert write_images({}, tmp_path / "never") == []
    assert not (tmp_path / "never").exists()


def test_without_kaleido_the_reason_is_the_pip_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kaleido", None)  # makes `import kaleido` raise ImportError
    assert static_export_unavailable() == "static images need kaleido: pip install 'ranksearch[images]'"
    with pytest.raises(
        StaticExportUnavailable, match=r"^static images need kaleido: pip install 'ranksearch\[images\]'$"
    ):
        write_images(_figures(), tmp_path)
    assert issubclass(StaticExportUnavailable, RanksearchError)
    assert list(tmp_path.iterdir()) == []


@needs_kaleido
def test_without_chrome_the_reason_is_the_chromium_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "find_chromium", lambda: None)
    hint = "static images need Chrome/Chromium: apt-get install chromium (or set BROWSER_PATH)"
    assert static_export_unavailable() == hint
    with pytest.raises(StaticExportUnavailable, match=r"^static images need Chrome/Chromium: apt-get install chromium"):
        write_images(_figures(), tmp_path)


def test_images_and_the_browser_use_one_finder() -> None:
    assert images.find_chromium is browser.find_chromium
    assert images._kaleido_options("/opt/chrome/chrome")["path"] == "/opt/chrome/chrome"  # handed to kaleido


@needs_kaleido
@pytest.mark.parametrize("var", ["BROWSER_PATH", "RANKSEARCH_CHROMIUM"])
def test_a_browser_named_by_the_environment_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    missing = str(tmp_path / "no-such-chrome")
    monkeypatch.delenv("RANKSEARCH_CHROMIUM", raising=False)
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv(var, missing)
    assert images.find_chromium() == missing  # taken as it is
    assert static_export_unavailable() == (
        f"static images need Chrome/Chromium, but {var}={missing!r} is not an executable file"
    )
    with pytest.raises(StaticExportUnavailable, match=f"{var}="):
        write_images(_figures(), tmp_path)
    if UNAVAILABLE is None:  # a real browser named by the variable is accepted
        monkeypatch.delenv(var)
        monkeypatch.setenv(var, str(images.find_chromium()))
        assert static_export_unavailable() is None


def test_ranksearch_chromium_comes_before_browser_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKSEARCH_CHROMIUM", str(tmp_path / "mine"))
    monkeypatch.setenv("BROWSER_PATH", "/bin/sh")
    assert images.find_chromium() == str(tmp_path / "mine")
    if _kaleido_installed():
        assert "RANKSEARCH_CHROMIUM=" in str(static_export_unavailable())


@needs_kaleido
@pytest.mark.skipif(not os.access("/bin/false", os.X_OK), reason="needs /bin/false")
@pytest.mark.parametrize("var", ["BROWSER_PATH", "RANKSEARCH_CHROMIUM"])
def test_a_browser_that_does_not_start_is_unavailable_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    # with RANKSEARCH_CHROMIUM, which kaleido does not read, this also shows kaleido launches the browser we found
    monkeypatch.delenv("RANKSEARCH_CHROMIUM", raising=False)
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv(var, "/bin/false")
    assert static_export_unavailable() is None  # it exists: only starting it tells
    with pytest.raises(StaticExportUnavailable, match=r"^static images need a working Chrome/Chromium, but /bin/false"):
        write_images(_figures(), tmp_path)
    assert list(tmp_path.iterdir()) == []


@needs_kaleido
def test_importing_kaleido_survives_a_command_line_it_would_misparse() -> None:
    # kaleido's logistro parses sys.argv on its first import and exits on '--log' (an abbreviation of its
    # flags), so this needs a fresh interpreter; a bare 'ranksearch' package spares it torch's import time.
    package = Path(images.__file__).parent
    code = (
        f"import sys, types; pkg = types.ModuleType('ranksearch'); pkg.__path__ = [{str(package)!r}]; "
        "sys.modules['ranksearch'] = pkg; sys.argv[1:] = ['--log', 'x']; "
        "from ranksearch.render import images; images._import_kaleido(); print(sys.argv[1:])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "['--log', 'x']"), done.stderr
