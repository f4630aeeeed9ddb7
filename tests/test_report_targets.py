"""Reports of budget targets and sensitivity curves: the best trial per target (ties, the boundary, a target
no trial meets, bad targets), the dashboard's "Best per target" table and the per-layer sensitivity figure,
present only when the study has them. Synthetic trial records: no training here."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _records import make_results, record, toy_records

from ranksearch.errors import RanksearchError
from ranksearch.report import StudyResults, dashboard_html, figures, write_report

TARGETS = {"macs": [0.05, 0.15, 0.25, 0.35], "params": [0.3]}
BASE_FIGURES = ["pareto_macs", "layers", "parallel", "hypervolume", "finetune"]


def _records():
    return [
        record(0, 0.95, 1.0, methods=("dense",) * 3),
        record(1, 0.90, 0.30, params=0.5),
        record(2, 0.90, 0.28, params=0.6),  # ties 1 and 8 on accuracy: cheaper than 1, earlier than 8
        record(3, 0.88, 0.25 + 1e-13),  # at the 0.25 target up to float noise: meets it
        record(4, 0.70, 0.10),
        record(5, 0.99, 0.04, state="fail", failure="FloatingPointError: nan loss"),  # failed: never picked
        record(6, 0.70, 0.10, duplicate_of=4),  # a repeated config: counted once, as trial 4
        record(8, 0.90, 0.28, params=0.28),
    ]


def _curves():
    """Two layers x two methods x three levels; the last level of each curve interpolated."""
    points = []
    for layer, scale in (("conv1", 1.0), ("fc", 0.2)):
        for method, extra in (("svd", 0.0), ("tt", 0.1)):
            for fraction, cost, measured in ((0.25, 0.2, True), (0.5, 0.45, True), (1.0, 0.9, False)):
                loss = 1.0 + scale * (1 - fraction) + extra
                points.append([layer, method, fraction, cost, loss, 0.9 - (loss - 1), measured])
    points[5][4] = 0.9  # below the dense loss: a noisy proxy, clipped to no increase
    return {"dense_loss": 1.0, "dense_metric": 0.9, "seconds": 12.5, "probes": 8, "points": points}


def _results(**settings) -> StudyResults:
    return make_results(_records(), objectives=("accuracy", "macs", "params"), settings=settings)


# --- best per target ----------------------------------------------------------------------------
def test_best_per_target_picks_the_most_accurate_trial_within_each_target():
    best = _results(targets=TARGETS).best_per_target()
    assert list(best.columns) == ["cost", "target", "trial", "accuracy", "value", "macs", "params", "methods"]
    assert list(zip(best["cost"], best["target"], strict=True)) == [
        ("macs", 0.05), ("macs", 0.15), ("macs", 0.25), ("macs", 0.35), ("params", 0.3)
    ]  # fmt: skip
    # 0.05: only the failed trial 5 is that cheap; 0.15: 4, not its repeat 6; 0.35: 2 beats 1 (cheaper) and 8
    # (same cost, later); params 0.3: 8 (params 0.28), not 2 (params 0.6)
    assert best["trial"].tolist() == [pd.NA, 4, 3, 2, 8]
    np.testing.assert_allclose(best["accuracy"], [np.nan, 0.70, 0.88, 0.90, 0.90])
    np.testing.assert_allclose(best["value"], [np.nan, 0.10, 0.25 + 1e-13, 0.28, 0.28])
    np.testing.assert_allclose(best["params"], [np.nan, 0.10, 0.25 + 1e-13, 0.6, 0.28])
    assert best.loc[4, "macs"] == pytest.approx(0.28) and best.loc[1, "methods"] == "dense:1 svd:1 tt:1"


def test_best_per_target_takes_explicit_targets_and_is_empty_without_any():
    results = _results(targets=TARGETS)
    best = results.best_per_target({"macs": [0.29]})
    assert best[["cost", "target", "trial"]].values.tolist() == [["macs", 0.29, 2]]
    assert results.best_per_target({}).empty  # explicit none: not the study's
    untargeted = _results()
    assert untargeted.best_per_target().empty and "trial" in untargeted.best_per_target().columns


def test_a_latency_target_without_latency_measurements_finds_no_trial():
    best = _results().best_per_target({"latency": (0.5,)})
    assert best["trial"].isna().all() and "latency" in best.columns


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ({"flops": [0.5]}, "unknown target cost 'flops'; available: macs, params, latency"),
        ({"macs": [1.5]}, r"targets macs must be fractions of dense in \(0, 1\), got 1.5"),
        ({"macs": []}, "targets macs must be a non-empty list of fractions"),
        (["macs"], "targets must map a cost to fractions"),
    ],
)
def test_bad_targets_say_what_is_wrong(targets, message):
    with pytest.raises(RanksearchError, match=message):
        _results().best_per_target(targets)


# --- sensitivity curves -------------------------------------------------------------------------
def test_sensitivity_frame_reads_the_stored_curves():
    frame = _results(sensitivity=_curves()).sensitivity()
    assert len(frame) == 12 and frame["measured"].sum() == 8
    assert frame.loc[0, "loss_increase"] == pytest.approx(0.75) and frame.loc[5, "loss_increase"] == 0.0
    assert _results().sensitivity().empty
    with pytest.raises(RanksearchError, match="stored sensitivity curves are malformed"):
        _results(sensitivity={"dense_loss": 1.0, "points": [["conv1", "svd", 0.5]]}).sensitivity()


def test_sensitivity_frame_matches_the_sensitivity_class():
    from ranksearch.sensitivity import Sensitivity  # torch: only this test

    expected = Sensitivity.from_dict(_curves()).frame()
    pd.testing.assert_frame_equal(_results(sensitivity=_curves()).sensitivity(), expected, check_dtype=False)


def test_sensitivity_figure_draws_one_curve_per_layer_and_method():
    figs = figures(_results(sensitivity=_curves()))
    assert list(figs)[-1] == "sensitivity"
    fig = figs["sensitivity"]
    assert [t.name for t in fig.data] == ["conv1 · svd", "fc · svd", "conv1 · tt", "fc · tt"]
    assert fig.layout.xaxis.type == "log" and "8 probes" in fig.layout.title.text
    first = fig.data[0]
    assert list(first.x) == [0.2, 0.45, 0.9] and list(first.y) == pytest.approx([0.75, 0.5, 0.0])
    assert list(first.marker.symbol) == ["circle", "circle", "circle-open"]
    assert "interpolated" in first.hovertext[2] and "accuracy 0.9000" in first.hovertext[2]
    assert "kept rank 25%" in first.hovertext[0] and "<b>conv1</b> · svd" in first.hovertext[0]
    assert min(min(t.y) for t in fig.data) == 0.0  # the noisy point below dense is clipped
    labels = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert labels == ["all methods", "svd", "tt"]
    assert list(fig.layout.updatemenus[0].buttons[2].args[0]["visible"]) == [False, False, True, True]


def test_figures_without_curves_keep_their_set():
    assert list(figures(make_results(toy_records()))) == BASE_FIGURES
    assert "sensitivity" not in figures(_results(targets=TARGETS))


# --- dashboard and report folder ----------------------------------------------------------------
def test_dashboard_has_the_targets_table_and_the_sensitivity_figure():
    results = _results(targets=TARGETS, sensitivity=_curves())
    page = dashboard_html(results, figures(results), study_file="studies/toy.toml")
    assert "<h2>Best per target</h2>" in page and 'id="section-sensitivity"' in page
    table = page[page.index('id="targets-table"') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 1 + 5 and "none within the target" in table
    assert "ranksearch export studies/toy.toml --trial 4" in page  # the first target a trial meets
    assert "12 points (see the sensitivity figure)" in page  # the settings dump summarizes the curves


def test_dashboard_without_targets_or_curves_has_neither():
    results = _results()
    page = dashboard_html(results, figures(results))
    assert "Best per target" not in page and 'id="targets-table"' not in page
    assert 'id="section-sensitivity"' not in page


def test_write_report_writes_the_target_and_sensitivity_tables(tmp_path):
    files = write_report(_results(targets=TARGETS, sensitivity=_curves()), tmp_path)
    assert {"targets.csv", "sensitivity.csv"} <= {p.name for p in files.tables}
    assert pd.read_csv(tmp_path / "targets.csv")["trial"].tolist()[1:] == [4, 3, 2, 8]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [t["trial"] for t in summary["best_per_target"]] == [None, 4, 3, 2, 8]
    plain = write_report(_results(), tmp_path / "plain")
    assert not {"targets.csv", "sensitivity.csv"} & {p.name for p in plain.tables}
