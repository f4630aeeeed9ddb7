"""Headless Chromium for the report: render a page and collect its JavaScript errors, take screenshots
(``browser``), and export plotly figures as static images through kaleido (``images``).

``_chromium`` finds the one browser both use (``RANKSEARCH_CHROMIUM``, ``BROWSER_PATH``, then PATH);
``_page_errors`` turns a page's errors into one-line messages. Only the standard library and the
optional ``kaleido`` extra are needed; nothing here imports torch or Optuna.
"""
