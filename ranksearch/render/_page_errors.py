"""A page's JavaScript errors as one-line messages, for :mod:`ranksearch.browser`.

Two sources: the Chrome DevTools Protocol events the browser sent (uncaught exceptions, ``console.error``,
failed loads), and the dashboard's own error hook (``window.__ranksearchErrors``, or the
``<pre id="ranksearch-js-errors">`` it writes to), which also sees errors raised before the browser
listened. :func:`merge` joins them without repeating an error both saw.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

__all__ = ["ERRORS_ELEMENT", "HOOK_JS", "errors_element", "event_errors", "exception_text", "merge"]

ERRORS_ELEMENT = "ranksearch-js-errors"  # <pre> the dashboard's own error hook writes to (one error a line)
HOOK_JS = "Array.isArray(window.__ranksearchErrors) ? window.__ranksearchErrors.map(String) : null"
"""Evaluated in the page: the errors the dashboard's hook recorded, or null without a hook."""


def event_errors(events: list[dict[str, Any]]) -> list[str]:
    """The JavaScript errors among DevTools ``events``, in order."""
    found = []
    for event in events:
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown":
            found.append(exception_text(params["exceptionDetails"]))
        elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(_remote_text(arg) for arg in params.get("args", []))
            found.append(f"console.{params['type']}: {text}{_location(params.get('stackTrace'))}")
        elif event.get("method") == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            where = f" ({entry['url']})" if entry.get("url") else ""
            found.append(f"{entry.get('source', 'log')}: {entry.get('text', '')}{where}")
    return found


def exception_text(details: dict[str, Any]) -> str:
    """One line for a DevTools ``exceptionDetails``: its text, the exception's first line, `` (url:line)``."""
    exception = details.get("exception") or {}
    message = (exception.get("description") or _remote_text(exception)) if exception else ""
    first_line = message.splitlines()[0] if message else ""
    text = details.get("text", "Uncaught")
    joined = f"{text} {first_line}" if first_line and first_line not in text else text
    return f"{joined}{_location(details)}"


def _remote_text(obj: dict[str, Any]) -> str:
    if "value" in obj:
        return obj["value"] if isinstance(obj["value"], str) else json.dumps(obj["value"])
    return str(obj.get("description") or obj.get("unserializableValue") or obj.get("type", ""))


def _location(where: dict[str, Any] | None) -> str:
    """`` (url:line)`` from exceptionDetails or a stackTrace, or ''."""
    if not where:
        return ""
    if "callFrames" in where:
        frames = where["callFrames"]
        where = frames[0] if frames else {}
    url = where.get("url")
    return f" ({url}:{where.get('lineNumber', 0) + 1})" if url else ""


def errors_element(dom: str) -> list[str]:
    """The lines of the dashboard's ``<pre id="ranksearch-js-errors">``, if it has one."""
    match = re.search(rf'<pre[^>]*\bid="{ERRORS_ELEMENT}"[^>]*>(.*?)</pre>', dom, re.DOTALL)
    if not match:
        return []
    text = html.unescape(re.sub(r"<[^>]+>", "", match.group(1)))
    return [line.strip() for line in text.splitlines() if line.strip()]


def merge(seen: list[str], hooked: list[str]) -> list[str]:
    """``seen`` plus each ``hooked`` message that does not repeat one of them.

    The same error reads differently in the two sources ("Uncaught Error: boom (page.html:3)" against,
    say, "Unhandled rejection: boom"), so they are compared on what follows the last ": ".
    """

    def key(message: str) -> str:
        message = re.sub(r" \([^()]*:\d+\)$", "", message.strip())  # our " (url:line)" suffix
        return message.rsplit(": ", 1)[-1].strip()

    def same(a: str, b: str) -> bool:
        return a == b or (min(len(a), len(b)) >= 8 and (a in b or b in a))

    merged = list(dict.fromkeys(seen))
    for message in dict.fromkeys(hooked):
        if not any(same(key(message), key(m)) for m in merged):
            merged.append(message)
    return merged
