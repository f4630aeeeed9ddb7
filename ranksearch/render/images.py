"""Static image export (PNG, SVG, PDF, JPEG, WebP) of plotly figures through kaleido.

kaleido (``pip install 'ranksearch[images]'``) renders with a Chrome/Chromium on the machine
(``apt-get install chromium``): the one :func:`ranksearch.browser.find_chromium` picks
(``$RANKSEARCH_CHROMIUM``, then kaleido's ``$BROWSER_PATH``, ...), handed to kaleido so that both
agree. Starting that browser is the slow part of an export, so :func:`write_images` starts it once
for a whole batch and closes it afterwards, error or not. Everything works without kaleido and Chrome
except the export itself: :func:`static_export_unavailable` says cheaply whether it can work, and
:func:`write_images` raises :class:`StaticExportUnavailable` with the same one-line reason when it cannot.

MathJax is off (plotly.js' LaTeX in titles shows as raw text) unless ``plotly.io.defaults.mathjax``
names a copy: kaleido's default fetches it from a CDN on every browser start, which is slow and
stalls without a network. ``plotly.io.defaults.plotlyjs`` and ``.topojson`` are honoured as plotly does.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import RanksearchError
from ._chromium import executable, find_chromium, hidden_command_line, named_by_env

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "FORMATS",
    "ImageExportError",
    "StaticExportUnavailable",
    "static_export_unavailable",
    "write_images",
]

FORMATS = ("png", "svg", "pdf", "jpeg", "webp")
"""The formats :func:`write_images` writes; each is also the file's extension."""

INSTALL_KALEIDO = "static images need kaleido: pip install 'ranksearch[images]'"
INSTALL_CHROME = "static images need Chrome/Chromium: apt-get install chromium (or set BROWSER_PATH)"

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


class ImageExportError(RanksearchError):
    """Bad arguments to :func:`write_images` (format, name, size), or a figure that failed to render."""


class StaticExportUnavailable(ImageExportError):
    """This machine cannot export static images: kaleido or Chrome is missing or broken (the message says which)."""


@dataclass(frozen=True)
class _Job:
    name: str
    fmt: str
    fig: Any
    path: Path


class _RenderFailed(Exception):
    def __init__(self, job: _Job, cause: BaseException) -> None:
        super().__init__(job)
        self.job, self.cause = job, cause


def _import_kaleido() -> ModuleType:
    """``import kaleido``, shielded from two import-time side effects that do not concern us.

    Its logging helper would parse our command line (see :func:`~ranksearch._chromium.hidden_command_line`).
    kaleido warns at import when plotly < 6.1.1 because ``fig.write_image`` then fails; we call kaleido's
    own API, which works with those plotly versions, so that warning is muted.
    """
    with hidden_command_line(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*not compatible with this version of Kaleido")
        import kaleido
    return kaleido


def _kaleido_unavailable() -> str | None:
    """None when kaleido >= 1 imports, else the one-line reason with its fix."""
    try:
        kaleido = _import_kaleido()
    except ImportError:
        return INSTALL_KALEIDO
    if not hasattr(kaleido, "Kaleido"):  # kaleido 0.x: another API, and it bundled its own browser
        return f"static images need kaleido>=1 (found {getattr(kaleido, '__version__', 'an older one')}): " + (
            "pip install 'ranksearch[images]'"
        )
    return None


def _chrome() -> tuple[str | None, str | None]:
    """``(the browser's executable, None)``, or ``(None, the one-line reason there is none)``."""
    found = find_chromium()
    if found and (path := executable(found)):
        return path, None
    if (named := named_by_env()) is not None:
        var, value = named
        return None, f"static images need Chrome/Chromium, but {var}={value!r} is not an executable file"
    return None, INSTALL_CHROME


def static_export_unavailable() -> str | None:
    """None when static export can work here, else the one-line reason with its fix.

    Cheap: it imports kaleido and looks for the browser, but renders nothing and starts nothing. A Chrome
    that is found but cannot start is only discovered by :func:`write_images`.
    """
    return _kaleido_unavailable() or _chrome()[1]


def _check_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    out: list[str] = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise ImageExportError(f"unknown image format {fmt!r}: choose from {', '.join(FORMATS)}")
        if fmt not in out:
            out.append(fmt)
    if not out:
        raise ImageExportError(f"no image format given: choose from {', '.join(FORMATS)}")
    return tuple(out)


def _check_names(names: Iterable[object]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith("."):
            raise ImageExportError(
                f"figure name {name!r} is not a safe file name: use letters, digits, '_', '-' and '.' "
                "(not first or last), at most 100 characters"
            )
        if (other := seen.setdefault(name.casefold(), name)) != name:
            raise ImageExportError(f"figure names {other!r} and {name!r} differ only in case: rename one")


def _check_sizes(width: int | None, height: int | None, scale: float) -> None:
    for what, value in (("width", width), ("height", height)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 10):
            raise ImageExportError(f"{what} must be an int >= 10 (layout pixels) or None, got {value!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < math.inf):
        raise ImageExportError(f"scale must be a number > 0, got {scale!r}")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def _render_all(kaleido: ModuleType, jobs: list[_Job], opts: dict[str, Any], kopts: dict[str, Any]) -> None:
    # One browser, one tab, for the whole batch; `async with` closes the browser on any exit.
    topojson = kopts.pop("topojson")
    async with kaleido.Kaleido(n=1, **kopts) as k:
        for job in jobs:
            try:
                data = await k.calc_fig(job.fig, opts={**opts, "format": job.fmt}, topojson=topojson)
            except Exception as e:
                raise _RenderFailed(job, e) from e
            _atomic_write(job.path, data)


def _one_line(exc: BaseException) -> str:
    text = next((a for a in exc.args if isinstance(a, str)), None) or str(exc) or type(exc).__name__
    return " ".join(text.split())


def _kaleido_options(chrome: str) -> dict[str, Any]:
    """kaleido's constructor options: the browser to launch (``path``), plotly.io's defaults."""
    import plotly.io as pio

    d = pio.defaults
    kopts: dict[str, Any] = {
        "path": chrome,
        "mathjax": getattr(d, "mathjax", None) or False,
        "topojson": getattr(d, "topojson", None),
    }
    if getattr(d, "plotlyjs", None):
        kopts["plotlyjs"] = d.plotlyjs
    return kopts


def _check_arguments(
    figures: Mapping[str, go.Figure], formats: str | Iterable[str], width: int | None, height: int | None, scale: float
) -> tuple[str, ...]:
    """The formats, deduplicated; raises :class:`ImageExportError` on the first bad argument."""
    fmts = _check_formats(formats)
    _check_names(figures)
    _check_sizes(width, height, scale)
    for name, fig in figures.items():
        if not (hasattr(fig, "to_dict") or (isinstance(fig, dict) and "data" in fig)):
            raise ImageExportError(f"figure {name!r} is a {type(fig).__name__}, not a plotly Figure")
    return fmts


def _usable_chrome() -> str:
    """The browser to hand kaleido; :class:`StaticExportUnavailable` as :func:`static_export_unavailable` says."""
    if (reason := _kaleido_unavailable()) is not None:
        raise StaticExportUnavailable(reason)
    chrome, reason = _chrome()
    if chrome is None:
        raise StaticExportUnavailable(reason or INSTALL_CHROME)
    return chrome


def _image_folder(folder: str | os.PathLike[str]) -> Path:
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImageExportError(f"cannot create the image folder {str(out)!r}: {e.strerror or e}") from e
    return out


def _render_options(width: int | None, height: int | None, scale: float) -> dict[str, Any]:
    opts: dict[str, Any] = {"scale": scale}
    if width is not None:
        opts["width"] = width
    if height is not None:
        opts["height"] = height
    return opts


def _render_batch(jobs: list[_Job], opts: dict[str, Any], chrome: str) -> None:
    """Render every job with one kaleido (browser ``chrome``); kaleido's failures become our errors."""
    kaleido = _import_kaleido()
    from kaleido.errors import BrowserFailedError, ChromeNotFoundError

    # In a worker thread with its own event loop, so that it also works when the caller runs one (Jupyter).
    with ThreadPoolExecutor(1, thread_name_prefix="ranksearch-kaleido") as pool:
        future = pool.submit(lambda: asyncio.run(_render_all(kaleido, jobs, opts, _kaleido_options(chrome))))
        try:
            future.result()
        except ChromeNotFoundError as e:
            raise StaticExportUnavailable(INSTALL_CHROME) from e
        except BrowserFailedError as e:
            raise StaticExportUnavailable(
                f"static images need a working Chrome/Chromium, but {chrome} did not start: {_one_line(e)}"
            ) from e
        except _RenderFailed as e:
            raise ImageExportError(
                f"could not render figure {e.job.name!r} as {e.job.fmt}: {type(e.cause).__name__}: {_one_line(e.cause)}"
            ) from e.cause


def write_images(
    figures: Mapping[str, go.Figure],
    folder: str | os.PathLike[str],
    formats: str | Iterable[str] = ("png",),
    *,
    width: int | None = None,
    height: int | None = None,
    scale: float = 2.0,
) -> list[Path]:
    """Write ``<folder>/<name>.<fmt>`` for every figure and format, with one browser for the whole batch.

    ``formats`` are from :data:`FORMATS`. ``width``/``height`` are layout pixels (None: the figure's own
    ``layout.width``/``height``, else 700×500); raster formats come out ``scale`` times larger. Each file
    is replaced atomically. Returns the paths written, figure by figure in the mapping's order and
    format by format within each figure.

    Raises :class:`ImageExportError` for bad arguments or a figure that fails to render (naming it), and
    :class:`StaticExportUnavailable` when kaleido or Chrome is missing or Chrome does not start.
    """
    fmts = _check_arguments(figures, formats, width, height, scale)
    if not figures:
        return []
    chrome = _usable_chrome()
    out = _image_folder(folder)
    jobs = [_Job(name, fmt, fig, out / f"{name}.{fmt}") for name, fig in figures.items() for fmt in fmts]
    _render_batch(jobs, _render_options(width, height, scale), chrome)
    return [job.path for job in jobs]
