"""Reports of a study: results as plain data, Pareto maths, plotly figures, the HTML dashboard, choosing.

Compute first, then draw: :class:`StudyResults` holds the trials table, front and hypervolume;
the figure functions and the dashboard only read it. Nothing here imports Optuna
(``ranksearch.study.results_of`` turns an Optuna study into :class:`StudyResults`).
"""

from __future__ import annotations

from ._dashboard import dashboard_html, write_dashboard
from ._figures import (
    figures,
    finetune_effect,
    hypervolume_figure,
    latency_check_figure,
    layer_heatmap,
    pareto_3d,
    pareto_scatter,
    rank_parallel_coordinates,
    sensitivity_figure,
)
from ._pareto import hypervolume, hypervolume_history, pareto_mask
from ._results import StudyResults, TrialRecord, config_summary, layer_columns, trials_table
from ._selection import Choice, choose, knee_point
from ._writer import ReportFiles, write_report

__all__ = [
    "Choice",
    "ReportFiles",
    "StudyResults",
    "TrialRecord",
    "choose",
    "config_summary",
    "dashboard_html",
    "figures",
    "finetune_effect",
    "hypervolume",
    "hypervolume_figure",
    "hypervolume_history",
    "knee_point",
    "latency_check_figure",
    "layer_columns",
    "layer_heatmap",
    "pareto_3d",
    "pareto_mask",
    "pareto_scatter",
    "rank_parallel_coordinates",
    "sensitivity_figure",
    "trials_table",
    "write_dashboard",
    "write_report",
]
