"""Plotly figures of a study, drawn from :class:`StudyResults` (all the computing happens there).

Each function returns a ``plotly.graph_objects.Figure``; :func:`figures` returns all that apply to a
study, keyed by a file-name-safe name, in the order the dashboard shows them. The quality axis is the
study's :attr:`~StudyResults.quality` (accuracy, or fidelity for a study without it).
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from ..record import DENSE
from ._pareto import pareto_mask
from ._results import StudyResults, layer_columns

__all__ = [
    "figures",
    "finetune_effect",
    "hypervolume_figure",
    "latency_check_figure",
    "layer_heatmap",
    "pareto_3d",
    "pareto_scatter",
    "rank_parallel_coordinates",
    "sensitivity_figure",
]

METHOD_LETTERS = {DENSE: "·", "svd": "S", "tucker2": "T", "tucker2_hooi": "H", "cp": "C", "tt": "TT"}
LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 60, "b": 50}, "height": 460}
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
"""Line styles of the sensitivity curves, one per method."""
COST_AXIS_MAX = 1.1
"""Cost axes stop here by default (the dense model is at 1.0)."""
LABELS = {
    "accuracy": "accuracy",
    "fidelity": "fidelity (agreement with the dense model)",
    "macs": "MACs (fraction of dense)",
    "params": "parameters (fraction of dense)",
    "latency": "latency (fraction of dense, predicted)",
    "memory": "memory: weights + peak activations (fraction of dense)",
}


def _label(objective: str) -> str:
    return LABELS.get(objective, objective)


Hover = dict[int, str]
"""Trial number -> hover text; built once by :func:`figures` and shared by every figure."""


def hover_texts(results: StudyResults) -> Hover:
    """Per completed trial: number, objectives (and the other measured quality), then each compressed layer's
    method, rank and fraction."""
    frame = results.completed()
    columns = [layer_columns(layer) for layer in results.layers]
    shown = [*results.objectives, *(q for q in results.qualities if q not in results.objectives)]
    texts = {}
    for row in frame.to_dict("records"):
        lines = [f"<b>trial {int(row['trial'])}</b>"]
        lines += [f"{o}: {row[o]:.4f}" for o in shown]
        dense = 0
        for layer, (method_col, rank_col, fraction_col) in zip(results.layers, columns, strict=True):
            if row[method_col] == DENSE:
                dense += 1
                continue
            fraction = row[fraction_col]
            share = f" ({fraction:.0%})" if pd.notna(fraction) else ""
            lines.append(f"{html.escape(layer)}: {row[method_col]} r={row[rank_col]}{share}")
        lines.append(f"{dense} layer(s) dense")
        texts[int(row["trial"])] = "<br>".join(lines)
    return texts


def _hover(results: StudyResults, frame: pd.DataFrame, hover: Hover | None) -> list[str]:
    hover = hover_texts(results) if hover is None else hover
    return [hover[int(t)] for t in frame["trial"]]


def pareto_scatter(results: StudyResults, cost: str, hover: Hover | None = None) -> go.Figure:
    """The quality against one cost: every trial in grey, the front of this pair joined, the dense model starred."""
    frame, quality = results.completed(), results.quality
    dense = results.dense_quality()
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=frame[cost], y=frame[quality], mode="markers", name="trials",
            marker={"color": "rgba(120,120,120,0.45)", "size": 7},
            hovertext=_hover(results, frame, hover), hoverinfo="text",
        )
    )  # fmt: skip
    if not frame.empty:
        pair = pareto_mask(frame[[quality, cost]].to_numpy(dtype=float), ["maximize", "minimize"])
        front = frame[pair].sort_values([cost, quality])
        fig.add_trace(
            go.Scatter(
                x=front[cost], y=front[quality], mode="lines+markers", name=f"Pareto front ({len(front)})",
                line={"shape": "hv", "color": "#d62728"}, marker={"size": 9, "color": "#d62728"},
                hovertext=_hover(results, front, hover), hoverinfo="text",
            )
        )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=[1.0], y=[dense], mode="markers", name="dense model",
            marker={"symbol": "star", "size": 16, "color": "#1f77b4"},
            hovertext=[f"dense model<br>{quality} {dense:.4f}"], hoverinfo="text",
        )
    )  # fmt: skip
    title = f"{quality.capitalize()} vs {_label(cost)}"
    beyond = int((frame[cost] > COST_AXIS_MAX).sum())
    if beyond:  # configs costlier than dense squash the interesting part: keep them off the default view
        fig.update_xaxes(range=[0, COST_AXIS_MAX])
        title += f" ({beyond} trial(s) above {COST_AXIS_MAX:g}x dense off the axis: zoom out to see them)"
    fig.update_layout(title=title, xaxis_title=_label(cost), yaxis_title=_label(quality), **LAYOUT)
    return fig


def pareto_3d(results: StudyResults, hover: Hover | None = None) -> go.Figure:
    """The quality against two costs in 3-D, Pareto points in red, the dense model starred."""
    x, y = results.costs[:2]
    frame, quality = results.completed(), results.quality
    colors = np.where(frame["is_pareto"], "#d62728", "rgba(120,120,120,0.5)")
    fig = go.Figure(
        [
            go.Scatter3d(
                x=frame[x], y=frame[y], z=frame[quality], mode="markers", name="trials (Pareto in red)",
                marker={"size": 4, "color": colors}, hovertext=_hover(results, frame, hover), hoverinfo="text",
            ),
            go.Scatter3d(
                x=[1.0], y=[1.0], z=[results.dense_quality()], mode="markers", name="dense model",
                marker={"size": 7, "symbol": "diamond", "color": "#1f77b4"},
            ),
        ]
    )  # fmt: skip
    fig.update_layout(
        title=f"{quality.capitalize()} vs both costs",
        scene={"xaxis_title": _label(x), "yaxis_title": _label(y), "zaxis_title": _label(quality)},
        **{**LAYOUT, "height": 560},
    )
    return fig


def layer_heatmap(results: StudyResults) -> go.Figure:
    """Kept-rank fraction per layer (columns, model order) for each Pareto trial (rows, cheapest first).

    Dense layers show 1.0 and "·"; the text in each cell is the method's letter (S svd, T tucker2,
    H tucker2_hooi, C cp, TT tt).
    """
    front = results.pareto()
    z, text = [], []
    for _, row in front.iterrows():
        cols = [layer_columns(layer) for layer in results.layers]
        z.append([row[f] if pd.notna(row[f]) else np.nan for _, _, f in cols])
        text.append([METHOD_LETTERS.get(row[m], row[m]) for m, _, _ in cols])
    quality = results.quality
    labels = [f"#{int(t)} · {row[quality]:.3f}" for t, (_, row) in zip(front["trial"], front.iterrows(), strict=True)]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=list(results.layers), y=labels, text=text, texttemplate="%{text}", zmin=0, zmax=1,
            colorscale="Viridis", colorbar={"title": "kept rank"},
            hovertemplate="%{y}<br>%{x}: %{text}, kept %{z:.0%}<extra></extra>",
        )
    )  # fmt: skip
    fig.update_layout(
        title="Pareto configs per layer: method (letter) and kept-rank fraction (colour)",
        xaxis_title="layer",
        yaxis_title=f"trial · {quality} (cheapest {results.primary_cost} first)",
        xaxis={"type": "category"},  # layer names such as "0.0", "3", "10" are names, not numbers
        yaxis={"autorange": "reversed", "type": "category"},
        **{**LAYOUT, "height": max(320, 140 + 24 * len(front))},
    )
    return fig


def rank_parallel_coordinates(results: StudyResults) -> go.Figure:
    """Per-layer kept-rank fractions (dense = 1) of every completed trial, one line each, coloured by the quality."""
    frame, quality = results.completed(), results.quality
    dimensions = [
        {"label": layer, "values": frame[layer_columns(layer)[2]].fillna(1.0), "range": [0, 1]}
        for layer in results.layers
    ]
    values = frame[quality]
    dimensions.append({"label": quality, "values": values})
    fig = go.Figure(
        go.Parcoords(
            line={"color": values, "colorscale": "Viridis", "showscale": True, "colorbar": {"title": quality}},
            dimensions=dimensions,
        )
    )
    fig.update_layout(
        title=f"Kept-rank fraction per layer, coloured by {quality}",
        **{**LAYOUT, "margin": {**LAYOUT["margin"], "t": 110}},
    )
    return fig


def hypervolume_figure(results: StudyResults) -> go.Figure:
    """The front's hypervolume after each trial (against the reference point in the title)."""
    history = results.hypervolume_history()
    reference = ", ".join(f"{o}={v:g}" for o, v in results.reference_point().items())
    fig = go.Figure(go.Scatter(x=history["trial"], y=history["hypervolume"], mode="lines", line={"shape": "hv"}))
    fig.update_layout(
        title=f"Hypervolume of the front (reference {reference})",
        xaxis_title="trial",
        yaxis_title="hypervolume",
        **LAYOUT,
    )
    return fig


def finetune_effect(results: StudyResults, hover: Hover | None = None) -> go.Figure:
    """Accuracy before (after BatchNorm recalibration, else zero-shot) vs after the brief fine-tune (the stages
    are measured with labels only: :func:`figures` leaves this figure out of a study without accuracy)."""
    frame = results.completed()
    before = frame["accuracy_recalibrated"].fillna(frame["accuracy_zero_shot"])
    cost = results.primary_cost
    fig = go.Figure(
        go.Scatter(
            x=before, y=frame["accuracy"], mode="markers", name="trials",
            marker={"color": frame[cost], "colorscale": "Plasma", "showscale": True, "colorbar": {"title": cost}},
            hovertext=_hover(results, frame, hover), hoverinfo="text",
        )
    )  # fmt: skip
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="no change", line={"dash": "dot", "color": "grey"}))
    fig.update_layout(
        title="Accuracy before vs after the brief fine-tune",
        xaxis_title="accuracy before fine-tune (BN recalibrated)",
        yaxis_title="accuracy after fine-tune",
        legend={"x": 0.01, "y": 0.99},
        **LAYOUT,
    )
    return fig


def latency_check_figure(results: StudyResults) -> go.Figure:
    """Predicted vs measured whole-model latency of the timed trials, as fractions of the dense model (each
    measured against the dense model timed next to it), before and after the per-model correction."""
    check = results.latency_check()
    fig = go.Figure()
    traces = (
        (False, "predicted_ratio", "error", "sampled trials", "rgba(120,120,120,0.6)"),
        (True, "predicted_ratio", "error", "Pareto", "#d62728"),
        (None, "corrected_ratio", "corrected_error", "corrected (leave-one-out)", "#1f77b4"),
    )
    for on_front, column, error, name, color in traces:
        part = check if on_front is None else check[check["is_pareto"] == on_front]
        fig.add_trace(
            go.Scatter(
                x=part["measured_ratio"], y=part[column], mode="markers", name=name,
                marker={"color": color, "size": 8, "symbol": "x" if on_front is None else "circle"},
                hovertext=[f"trial {t}: error {e:+.1%}" for t, e in zip(part["trial"], part[error], strict=True)],
                hoverinfo="text", visible=True if on_front is not None else "legendonly",
            )
        )  # fmt: skip
    if len(check):
        high = float(max(check["measured_ratio"].max(), check["predicted_ratio"].max(), 1.0)) * 1.05
        fig.add_trace(
            go.Scatter(x=[0, high], y=[0, high], mode="lines", name="exact", line={"dash": "dot", "color": "grey"})
        )
    summary = ""
    if len(check):
        summary = f"median |error| {check['error'].abs().median():.1%} over {len(check)} timed configs"
    fig.update_layout(
        title=f"Latency: predicted vs measured (fraction of dense) {summary}",
        xaxis_title="measured latency / dense measured next to it",
        yaxis_title="predicted from the latency table",
        **LAYOUT,
    )
    return fig


def _curve_hover(curve: pd.DataFrame, metric: str) -> list[str]:
    return [
        f"<b>{html.escape(r.layer)}</b> · {html.escape(r.method)}<br>kept rank {r.fraction:.0%}, "
        f"layer cost {r.cost:.1%} of dense<br>loss +{r.loss_increase:.4f} · {metric} {r.metric:.4f}"
        f"<br>{'measured' if r.measured else 'interpolated'}"
        for r in curve.itertuples()
    ]


def _method_menu(methods: list[str], trace_methods: list[str]) -> list[dict]:
    """A dropdown showing every curve or one method's (only worth it with two methods or more)."""
    buttons = [{"label": "all methods", "method": "restyle", "args": [{"visible": [True] * len(trace_methods)}]}]
    buttons += [
        {"label": m, "method": "restyle", "args": [{"visible": [t == m for t in trace_methods]}]} for m in methods
    ]
    return [{"buttons": buttons, "x": 0.0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"}]


def sensitivity_figure(results: StudyResults) -> go.Figure:
    """Per-layer sensitivity: the proxy loss increase over dense with only that layer compressed, against
    the layer's cost (log axis), one line per (layer, method), coloured by depth (dark = early layers) and
    dashed by method.

    Filled markers were measured, open ones interpolated; with several methods a menu shows one at a time.
    """
    frame = results.sensitivity()
    order = list(dict.fromkeys([*(layer for layer in results.layers if layer in set(frame["layer"])), *frame["layer"]]))
    colors = sample_colorscale("Viridis", [i / max(1, len(order) - 1) for i in range(len(order))])
    methods = list(dict.fromkeys(frame["method"]))
    metric = "accuracy" if "accuracy" in results.qualities else "fidelity"  # the proxy: fidelity without labels
    fig, trace_methods = go.Figure(), []
    for number, method in enumerate(methods):
        dash = DASHES[number % len(DASHES)]
        for index, layer in enumerate(order):
            curve = frame[(frame["layer"] == layer) & (frame["method"] == method)].sort_values("cost")
            if curve.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=curve["cost"], y=curve["loss_increase"], mode="lines+markers", name=f"{layer} · {method}",
                    line={"color": colors[index], "width": 1.5, "dash": dash},
                    legendgroup=method, legendgrouptitle_text=method,
                    marker={"color": colors[index], "size": 7,
                            "symbol": ["circle" if m else "circle-open" for m in curve["measured"]]},
                    hovertext=_curve_hover(curve, metric), hoverinfo="text",
                )
            )  # fmt: skip
            trace_methods.append(method)
    stored = results.settings.get("sensitivity") or {}
    title = "Per-layer sensitivity: proxy loss increase with one layer compressed"
    title += f" ({stored.get('probes', len(frame))} probes, {float(stored.get('seconds', 0.0)):.0f} s)"
    fig.update_layout(
        title=title,
        xaxis={"title": "layer cost (fraction of its dense cost, log)", "type": "log"},
        yaxis_title="loss increase over dense",
        updatemenus=_method_menu(methods, trace_methods) if len(methods) > 1 else [],
        **{**LAYOUT, "height": 540, "margin": {**LAYOUT["margin"], "t": 100}},
    )
    return fig


def figures(results: StudyResults) -> dict[str, go.Figure]:
    """Every figure that applies to the study, by name: ``pareto_<cost>`` per cost, ``pareto_3d`` with two
    costs, ``layers``, ``parallel``, ``hypervolume``, ``finetune`` (when the study measured accuracy), then
    ``latency_check`` with timed trials and ``sensitivity`` with per-layer sensitivity curves.
    """
    hover = hover_texts(results)
    out = {f"pareto_{cost}": pareto_scatter(results, cost, hover) for cost in results.costs}
    if len(results.costs) >= 2:
        out["pareto_3d"] = pareto_3d(results, hover)
    out["layers"] = layer_heatmap(results)
    out["parallel"] = rank_parallel_coordinates(results)
    out["hypervolume"] = hypervolume_figure(results)
    if "accuracy" in results.qualities:
        out["finetune"] = finetune_effect(results, hover)
    if not results.latency_check().empty:
        out["latency_check"] = latency_check_figure(results)
    if not results.sensitivity().empty:
        out["sensitivity"] = sensitivity_figure(results)
    return out
