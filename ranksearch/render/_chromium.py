"""Which Chrome/Chromium to run: one answer for the headless renderer (:mod:`ranksearch.browser`) and for
kaleido's static images (:mod:`ranksearch.images`), so that both use the same browser.

The order: ``$RANKSEARCH_CHROMIUM``, ``$BROWSER_PATH`` (kaleido's own variable), each taken as given;
the first of :data:`CANDIDATES` on ``PATH``; then, where choreographer (kaleido's browser driver) is
installed, its lookup: the copy ``kaleido_get_chrome`` downloaded, other Chromium-based browsers on
``PATH`` and their usual install paths.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator

__all__ = ["CANDIDATES", "ENV_VARS", "executable", "find_chromium", "hidden_command_line", "named_by_env"]

ENV_VARS = ("RANKSEARCH_CHROMIUM", "BROWSER_PATH")
"""Variables that name the browser, first match wins; BROWSER_PATH is the one kaleido reads."""
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
"""Executable names looked up on PATH, in this order."""


def named_by_env() -> tuple[str, str] | None:
    """``(variable, value)`` of the first of :data:`ENV_VARS` that is set and not empty, else None."""
    for var in ENV_VARS:
        if value := os.environ.get(var):
            return var, value
    return None


def find_chromium() -> str | None:
    """The browser to use, in the order of the module docstring (an environment variable's value as given,
    not checked); None when there is none."""
    if (named := named_by_env()) is not None:
        return named[1]
    for name in CANDIDATES:
        if found := shutil.which(name):
            return found
    return _choreographer_lookup()


def executable(path: str) -> str | None:
    """``path`` itself, or the full path of a bare command name on PATH, when it is an executable file."""
    return shutil.which(path)


@contextlib.contextmanager
def hidden_command_line() -> Iterator[None]:
    """``sys.argv`` reduced to the program name for the duration.

    logistro (the logging helper of choreographer and kaleido) parses ``sys.argv`` when first imported
    and exits the process on any option that abbreviates its ``--logistro-*`` flags (``--log``,
    ``--lo``...): importing either package inside this block makes it see an empty command line.
    """
    argv = sys.argv
    try:
        sys.argv = argv[:1]
        yield
    finally:
        sys.argv = argv


def _choreographer_lookup() -> str | None:
    """choreographer's own search (kaleido's), or None when choreographer is missing or has moved it."""
    try:
        with hidden_command_line():
            from choreographer.browsers import Chromium

        return Chromium.find_browser(skip_local=False)
    except (ImportError, AttributeError, TypeError):
        return None
