"""The study dashboard: one self-contained HTML file (plotly.js inlined once) that works offline.

It holds the figures, the Pareto front as a sortable table, the hypervolume with its reference point,
the dense baseline, the study's settings and the commands to export a chosen trial. Its quality is the
study's (:attr:`StudyResults.quality`: accuracy, else fidelity), the other quality shown where measured.
The first script records JavaScript errors in ``window.__ranksearchErrors`` and in
``<pre id="ranksearch-js-errors">`` so a headless browser (the test suite) can check the page rendered cleanly.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from .._version import __version__
from ._results import StudyResults, layer_columns
from ._selection import choose

__all__ = ["dashboard_html", "write_dashboard"]

ERROR_HOOK = """
window.__ranksearchErrors = [];
(function () {
  function show() {
    var box = document.getElementById("ranksearch-js-errors");
    if (box && window.__ranksearchErrors.length) {
      box.textContent = window.__ranksearchErrors.join("\\n");
      box.hidden = false;
    }
  }
  function record(message) { window.__ranksearchErrors.push(String(message)); show(); }
  window.addEventListener("error", function (e) { record(e.message || e); });
  window.addEventListener("unhandledrejection", function (e) { record("unhandled rejection: " + e.reason); });
  var consoleError = console.error;
  console.error = function () {
    record(Array.prototype.join.call(arguments, " "));
    consoleError.apply(console, arguments);
  };
  document.addEventListener("DOMContentLoaded", show);
})();
"""

SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var ascending = th.dataset.order !== "asc";
    table.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = ascending ? "asc" : "desc";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      var nx = parseFloat(x), ny = parseFloat(y);
      var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 1rem 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
.muted { color: #666; } .cards { display: flex; flex-wrap: wrap; gap: 1rem; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6rem 1rem; min-width: 14rem; }
.card b { display: block; font-size: 1.3rem; }
.figure { margin: 1rem 0; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 0.85rem; width: 100%; }
th, td { border-bottom: 1px solid #eee; padding: 0.25rem 0.5rem; text-align: right; }
th { cursor: pointer; background: #f6f6f6; position: sticky; top: 0; }
th[data-order="asc"]::after { content: " \\25B2"; } th[data-order="desc"]::after { content: " \\25BC"; }
td.text, th.text { text-align: left; } pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; }
code { background: #f3f3f3; padding: 0 0.2rem; }
#ranksearch-js-errors { color: #b00; }
"""


def _cell(value: object, digits: int = 4) -> tuple[str, str]:
    """(shown text, sort key) of a table cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-", ""
    if isinstance(value, float):
        return f"{value:.{digits}f}", repr(value)
    return html.escape(str(value)), html.escape(str(value))


def _layers_text(results: StudyResults, row: pd.Series) -> str:
    parts = []
    for layer in results.layers:
        method_col, rank_col, _ = layer_columns(layer)
        if row[method_col] != "dense":
            parts.append(f"{layer}={row[method_col]}:{row[rank_col]}")
    return " ".join(parts) or "all dense"


def _pareto_table(results: StudyResults) -> str:
    front = results.pareto()
    stages = [
        ("accuracy_zero_shot", "accuracy zero-shot", False),
        ("accuracy_recalibrated", "accuracy BN-recalibrated", False),
    ]
    columns = [
        ("trial", "trial", False),
        *((o, o, False) for o in results.objectives),
        *((q, q, False) for q in results.qualities if q not in results.objectives),
        ("macs_reduction", "MACs reduction (x)", False),
        ("params_reduction", "params reduction (x)", False),
        *(stages if "accuracy" in results.qualities else []),  # measured with labels only
        ("methods", "layers per method", True),
        ("layers", "compressed layers (method:rank)", True),
    ]
    head = "".join(f'<th class="{"text" if t else ""}">{html.escape(label)}</th>' for _, label, t in columns)
    rows = []
    for _, row in front.iterrows():
        cells = []
        for key, _, is_text in columns:
            value = _layers_text(results, row) if key == "layers" else row.get(key)
            if key == "trial":
                value = int(value)
            shown, sort_key = _cell(value, 2 if key.endswith("reduction") else 4)
            cells.append(f'<td class="{"text" if is_text else ""}" data-value="{sort_key}">{shown}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<table class="sortable" id="pareto-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _targets_section(results: StudyResults, study_file: str | None) -> str:
    """The "Best per target" section: per budget the study named, the best trial (highest quality) within it."""
    best = results.best_per_target()
    if best.empty:
        return ""
    extra = [c for c in ("latency", "memory", "methods") if c in best.columns]
    columns = ["cost", "target", "trial", *results.qualities, "value", "macs", "params", *extra]
    labels = {"value": "cost reached", "methods": "layers per method", "target": "target (x dense)"}
    head = "".join(f'<th class="{"text" if c in ("cost", "methods") else ""}">{labels.get(c, c)}</th>' for c in columns)
    rows = []
    for row in best.to_dict("records"):
        cells = []
        for column in columns:
            value = row[column]
            value = None if pd.isna(value) else int(value) if column == "trial" else value
            shown, sort_key = _cell(value)
            if column == "trial" and value is None:
                shown = "none within the target"
            elif column == "target":
                shown = f"{value:g}"
            cells.append(
                f'<td class="{"text" if column in ("cost", "methods") else ""}" data-value="{sort_key}">{shown}</td>'
            )
        rows.append(f"<tr>{''.join(cells)}</tr>")
    best_trial = "most accurate" if results.quality == "accuracy" else f"highest-{results.quality}"
    return f"""<h2>Best per target</h2>
<p class="muted">For each budget the study named: the {best_trial} completed trial whose cost is at most the
target (a fraction of the dense model); ties go to the cheaper trial.{_target_export(best, study_file)}</p>
<table class="sortable" id="targets-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>
"""


def _target_export(best: pd.DataFrame, study_file: str | None) -> str:
    found = best[best["trial"].notna()]
    if found.empty:
        return ""
    row = found.iloc[0]
    command = f"ranksearch export {study_file or 'STUDY.toml'} --trial {int(row['trial'])}"
    return f" Export one by number: <code>{html.escape(command)}</code> ({row['cost']} &le; {row['target']:g})."


def _settings_json(results: StudyResults) -> str:
    """The settings as stored, the sensitivity curves summarized (their points are in the figure)."""
    settings = {"dense": dict(results.dense), **results.settings}
    curves = settings.get("sensitivity")
    if isinstance(curves, Mapping) and isinstance(curves.get("points"), list):
        settings["sensitivity"] = {**curves, "points": f"{len(curves['points'])} points (see the sensitivity figure)"}
    return json.dumps(settings, indent=2, default=str)


def _cards(results: StudyResults) -> str:
    dense = results.dense
    trials = results.trials
    completed = int((trials["state"] == "complete").sum()) if len(trials) else 0
    failed = len(trials) - completed
    duplicates = int(trials["duplicate_of"].notna().sum()) if len(trials) else 0
    reference = ", ".join(f"{o} {v:g}" for o, v in results.reference_point().items())
    cards = [
        ("trials", f"{completed} completed", f"{failed} failed, {duplicates} repeated configs (measured once)"),
        ("Pareto front", f"{len(results.pareto())} configs", f"over {', '.join(results.objectives)}"),
        ("hypervolume", f"{results.hypervolume():.4f}", f"reference point: {reference} (dense cost = 1.0)"),
        *_quality_cards(results),
        *_latency_cards(results),
        *_memory_cards(results),
        ("dense cost", f"{int(dense['macs']):,} MACs",
         f"{int(dense['params']):,} parameters, input {_shape_text(dense.get('input_shape'))}"),
    ]  # fmt: skip
    return "".join(
        f'<div class="card"><span class="muted">{html.escape(t)}</span><b>{html.escape(v)}</b>'
        f'<span class="muted">{html.escape(s)}</span></div>'
        for t, v, s in cards
    )


def _shape_text(shape: object) -> str:
    """An input shape as stored: ``(1, 3, 32, 32)`` for one tensor, ``input_ids (1, 16), attention_mask (1, 16)``
    for a dict of inputs, ``[(1, 4), (1, 3)]`` for a tuple of them."""
    if isinstance(shape, Mapping):
        return ", ".join(f"{key} {_shape_text(value)}" for key, value in shape.items())
    if isinstance(shape, (list, tuple)):
        if all(isinstance(size, int) for size in shape):
            return str(tuple(shape))
        return "[" + ", ".join(_shape_text(item) for item in shape) + "]"
    return str(shape)


def _quality_cards(results: StudyResults) -> list[tuple[str, str, str]]:
    """The dense accuracy (when measured) and, for a study with fidelity, what the fidelity is."""
    cards = []
    accuracy = results.dense_quality("accuracy")
    if math.isfinite(accuracy):
        cards.append(("dense accuracy", f"{accuracy:.4f}", "on the evaluator's validation batches"))
    if "fidelity" in (*results.objectives, *results.qualities):
        kind = (results.settings.get("evaluator") or {}).get("fidelity", "auto")
        cards.append(("fidelity", f"{kind} agreement", "with the dense model's outputs, in [0, 1] (dense = 1.0)"))
    return cards


def _latency_cards(results: StudyResults) -> list[tuple[str, str, str]]:
    seconds = results.dense.get("latency_seconds")
    if seconds is None:
        return []
    settings = results.settings.get("latency") or {}
    how = f"batch {settings.get('batch_size')}, {settings.get('dtype')}, {settings.get('context', '')}"
    cards = [("dense latency", f"{seconds * 1e3:.3f} ms", how)]
    check = results.latency_check()
    if len(check):
        raw, corrected = check["error"].abs().median(), check["corrected_error"].abs().median()
        cards.append(
            (
                "latency prediction",
                f"{raw:.1%} median error",
                f"over {len(check)} timed configs, each against the dense model timed next to it; "
                f"{corrected:.1%} with the per-model scale {results.latency_scale:.2f} (leave-one-out)",
            )
        )
    return cards


def _memory_cards(results: StudyResults) -> list[tuple[str, str, str]]:
    memory = results.dense.get("memory_bytes")
    if memory is None:
        return []
    settings = results.settings.get("memory") or {}
    where = f"batch {settings.get('batch_size')}, {settings.get('dtype')}, {settings.get('device')}"
    how = f"weights + peak activations of one forward, {where}"
    return [("dense memory", f"{memory / 2**20:.2f} MiB", how)]


def _export_hint(results: StudyResults, study_file: str | None) -> str:
    if results.completed().empty:
        return "<p>No completed trial yet.</p>"
    source = study_file or "STUDY.toml"  # export rebuilds the model: it needs the study file
    knee = choose(results, knee=True)
    quality = results.quality
    best = "most accurate" if quality == "accuracy" else f"highest {quality}"
    lines = [
        f"ranksearch export {source} --knee            # {knee.rule}",
        f"ranksearch export {source} --trial {knee.trial}",
        f"ranksearch export {source} --max-macs 0.5     # {best} at <= 50% of the dense MACs",
        f"ranksearch export {source} --min-{quality} {results.dense_quality() - 0.01:.3f}",
    ]
    return "<pre>" + html.escape("\n".join(lines)) + "</pre>"


def _quality_note(results: StudyResults) -> str:
    if results.quality == "accuracy":
        return "Accuracy"
    return "Fidelity (the agreement of the compressed model's outputs with the dense model's, 1.0 = the same)"


def dashboard_html(results: StudyResults, figures: Mapping[str, go.Figure], *, study_file: str | None = None) -> str:
    """The dashboard page as one HTML string, most of it the inlined plotly.js."""
    blocks = []
    for name, fig in figures.items():
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{name}", config={"responsive": True})
        blocks.append(f'<div class="figure" id="section-{html.escape(name)}">{div}</div>')
    settings = _settings_json(results)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    storage = html.escape(str(results.storage)) if results.storage else "in memory"
    title = html.escape(f"ranksearch · {results.name}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script>{ERROR_HOOK}</script>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<pre id="ranksearch-js-errors" hidden></pre>
<h1>{title}</h1>
<p class="muted">storage <code>{storage}</code> · objectives {html.escape(", ".join(results.objectives))}
· written {when} by ranksearch {__version__}</p>
<div class="cards">{_cards(results)}</div>
<h2>Trade-off</h2>
<p class="muted">Costs are fractions of the dense model (1.0 = dense); MACs are multiply-accumulates
(FLOPs = 2 x MACs). Hover a point for its per-layer config.</p>
{"".join(blocks)}
<h2>Pareto front</h2>
<p class="muted">Click a column to sort. {_quality_note(results)} is measured after the brief fine-tune on the
evaluator's fixed validation batches.</p>
{_pareto_table(results)}
{_targets_section(results, study_file)}<h2>Export a configuration</h2>
{_export_hint(results, study_file)}
<h2>Settings</h2>
<details><summary>sampler, evaluator, search space and the dense model as the study stored them</summary>
<pre>{html.escape(settings)}</pre></details>
<script>{SORT_SCRIPT}</script>
</body></html>
"""


def write_dashboard(
    results: StudyResults, figures: Mapping[str, go.Figure], path: str | Path, *, study_file: str | None = None
) -> Path:
    """Write :func:`dashboard_html` to ``path`` (folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dashboard_html(results, figures, study_file=study_file), encoding="utf-8")
    return path
