"""Reports: Pareto mask and hypervolume against brute force, the trials table, choosing rules, figures,
the dashboard HTML and the report folder. Built from synthetic trial records: no training here."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from _records import LAYERS, NUMERIC_NAMES, make_results, numeric_named_results, record, toy_records

from ranksearch.errors import RanksearchError
from ranksearch.report import (
    StudyResults,
    choose,
    dashboard_html,
    figures,
    hypervolume,
    hypervolume_history,
    knee_point,
    layer_columns,
    pareto_mask,
    write_report,
)


@pytest.fixture
def toy() -> StudyResults:
    return make_results(
        [
            record(0, 0.95, 1.0, methods=("dense", "dense", "dense")),
            record(1, 0.90, 0.30),
            record(2, 0.93, 0.50),
            record(3, 0.80, 0.60),  # dominated by 1 and 2
            record(4, 0.60, 0.10),
            record(5, 0.90, 0.30, duplicate_of=1),
            record(6, float("nan"), 1.0, state="fail", failure="FloatingPointError: nan loss"),
            record(7, 0.94, 0.80, params=0.2),
        ]
    )


# --- Pareto maths -------------------------------------------------------------------------------
def brute_pareto(points, directions):
    sign = np.array([1 if d == "maximize" else -1 for d in directions])
    keep = []
    for p in points:
        dominated = any((sign * q >= sign * p).all() and (sign * q > sign * p).any() for q in points)
        keep.append(not dominated and not np.isnan(p).any())
    return np.array(keep)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("directions", [("maximize", "minimize"), ("maximize", "minimize", "minimize")])
def test_pareto_mask_matches_brute_force_with_ties_and_nans(seed, directions):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 6, size=(40, len(directions))).astype(float)  # many ties
    points[3] = np.nan
    assert (pareto_mask(points, directions) == brute_pareto(points, directions)).all()


def brute_hypervolume(points, reference):
    """Exact union volume on the grid of every distinct coordinate (minimization)."""
    points = np.asarray(points, dtype=float)
    axes = [np.unique(np.append(points[:, k], reference[k])) for k in range(len(reference))]
    volume = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        low = np.array([axes[k][i] for k, i in enumerate(cell)])
        high = np.array([axes[k][i + 1] for k, i in enumerate(cell)])
        if (points <= low).all(axis=1).any() and (high <= reference).all():
            volume += float(np.prod(high - low))
    return volume


def test_hypervolume_of_hand_made_fronts():
    assert hypervolume(np.array([[0.5, 0.5]]), (1.0, 1.0)) == pytest.approx(0.25, abs=1e-15)
    # two boxes 0.5 x 0.8 and 0.8 x 0.5 overlapping in 0.5 x 0.5: 0.4 + 0.4 - 0.25
    assert hypervolume(np.array([[0.5, 0.2], [0.2, 0.5]]), (1.0, 1.0)) == pytest.approx(0.55, abs=1e-15)
    assert hypervolume(np.array([[1.5, 0.1], [1.0, 0.2]]), (1.0, 1.0)) == 0.0  # not better than the reference
    assert hypervolume(np.empty((0, 2)), (1.0, 1.0)) == 0.0


@pytest.mark.parametrize("dims", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1234])
def test_hypervolume_matches_an_exact_grid_count(dims, seed):
    rng = np.random.default_rng(seed)
    points = rng.random((12, dims))
    reference = np.full(dims, 1.1)
    assert hypervolume(points, reference) == pytest.approx(brute_hypervolume(points, reference), rel=1e-12)


def test_hypervolume_history_is_monotone_and_ends_at_the_total():
    rng = np.random.default_rng(3)
    points = rng.random((30, 3))
    points[5] = np.nan
    history = hypervolume_history(points, (1.0, 1.0, 1.0))
    assert (np.diff(history) >= -1e-15).all()
    assert history[-1] == pytest.approx(hypervolume(points[~np.isnan(points).any(axis=1)], (1.0, 1.0, 1.0)))
    assert history[9] == pytest.approx(hypervolume(points[:10][~np.isnan(points[:10]).any(axis=1)], (1, 1, 1)))


# --- the trials table and StudyResults -----------------------------------------------------------
def test_trials_table_columns_flags_and_ratios(toy):
    table = toy.trials
    assert list(table.columns[:4]) == ["trial", "accuracy", "macs", "state"]
    for layer in LAYERS:
        assert set(layer_columns(layer)) <= set(table.columns)
    row = table.set_index("trial").loc[1]
    assert row["method:conv1"] == "svd" and row["rank:conv1"] == "4" and row["fraction:conv1"] == 0.25
    assert row["method:block.0"] == "dense" and row["fraction:block.0"] == 1.0
    assert row["macs_reduction"] == pytest.approx(1 / 0.3) and row["macs_count"] == 300
    flags = dict(zip(table["trial"], table["is_pareto"], strict=True))
    assert flags == {0: True, 1: True, 2: True, 3: False, 4: True, 5: True, 6: False, 7: True}
    assert table.set_index("trial").loc[6, "failure"].startswith("FloatingPointError")


def test_pareto_drops_duplicates_and_failures_cheapest_first(toy):
    assert list(toy.pareto()["trial"]) == [4, 1, 2, 7, 0]
    assert 5 not in set(toy.completed()["trial"]) and 6 not in set(toy.completed()["trial"])


def test_hypervolume_uses_the_dense_reference(toy):
    assert toy.reference_point() == {"accuracy": 0.0, "macs": 1.0}
    points = np.array([[-0.95, 1.0], [-0.9, 0.3], [-0.93, 0.5], [-0.6, 0.1], [-0.94, 0.8]])
    assert toy.hypervolume() == pytest.approx(brute_hypervolume(points, (0.0, 1.0)), rel=1e-12)
    history = toy.hypervolume_history()
    assert list(history["trial"]) == list(range(8)) and history["hypervolume"].iloc[-1] == pytest.approx(
        toy.hypervolume()
    )
    assert history["hypervolume"].iloc[0] == 0.0  # the dense model costs as much as the reference


def test_config_of_a_trial_and_errors(toy):
    assert toy.config(1)["conv1"] == ("svd", 4)
    with pytest.raises(RanksearchError, match=r"no trial 99 with a config \(trials 0\.\.7\)"):
        toy.config(99)
    with pytest.raises(RanksearchError, match="must be an int"):
        toy.config("1")


def test_an_empty_study_has_empty_views():
    empty = make_results([])
    assert empty.trials.empty and empty.pareto().empty and empty.hypervolume() == 0.0
    assert empty.hypervolume_history().empty


# --- choosing -----------------------------------------------------------------------------------
def test_choose_by_number_and_by_rules(toy):
    assert choose(toy, trial=2).trial == 2
    assert choose(toy, max_costs={"macs": 0.5}).trial == 2  # most accurate at <= 50% MACs
    assert choose(toy, max_costs={"macs": 0.35}).trial == 1
    assert choose(toy, max_costs={"params": 0.25}).trial == 7  # caps on a cost that is not an objective
    assert choose(toy, min_accuracy=0.92).trial == 2  # cheapest reaching 0.92
    assert choose(toy, max_accuracy_drop=0.06).trial == 1  # dense 0.95 - 0.06 = 0.89
    assert choose(toy, min_accuracy=0.9, max_costs={"macs": 0.4}).trial == 1
    assert "knee of accuracy vs macs" in choose(toy, knee=True).rule
    assert choose(toy, max_costs={"macs": 0.5}).note == ""  # a study without targets: nothing to say


def test_a_cap_between_the_studys_targets_that_its_pick_underspends_gets_a_note():
    records = [record(0, 0.95, 1.0, methods=("dense",) * 3), record(1, 0.9, 0.1), record(2, 0.93, 0.25)]
    aimed = make_results(records, settings={"targets": {"macs": [0.25, 0.1]}})
    assert choose(aimed, max_costs={"macs": 0.2}).note == (
        "this study aimed at macs 0.1, 0.25, not 0.2, and its best trial under 0.2 uses 0.100; "
        "a study that names 0.2 as a target (targets = { macs = [0.2] }) searches there"
    )
    assert choose(aimed, max_costs={"macs": 0.25}).note == ""  # a target
    assert choose(aimed, max_costs={"macs": 0.12}).note == ""  # 0.1 spends 83% of it
    assert choose(aimed, max_costs={"params": 0.2}).note == ""  # no params target
    assert choose(make_results(records), max_costs={"macs": 0.2}).note == ""  # no targets
    assert choose(aimed, trial=1).note == "" and choose(aimed, min_accuracy=0.9).note == ""


def test_knee_point_of_a_known_curve():
    cost = np.array([0.1, 0.2, 0.3, 0.6, 1.0])
    accuracy = np.array([0.5, 0.9, 0.93, 0.95, 0.96])  # the bend is at cost 0.2
    assert knee_point(accuracy, cost) == 1
    assert knee_point(np.array([0.5, 0.9]), np.array([0.1, 0.2])) == 1  # two points: the most accurate


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"trial": 42}, r"no trial 42 \(finished trials are 0\.\.7\)"),
        ({"trial": 6}, r"trial 6 .* failed \(FloatingPointError: nan loss\)"),
        ({"max_costs": {"macs": 0.05}}, r"no trial has macs <= 0\.05 of dense; the cheapest in macs is trial 4"),
        ({"min_accuracy": 0.99}, r"no trial reaches accuracy 0\.9900; the best is trial 0 \(accuracy 0\.9500"),
        (
            {"min_accuracy": 0.93, "max_costs": {"macs": 0.4}},
            r"no trial with macs <= 0\.4 reaches accuracy 0\.9300; the best is trial 1",
        ),
        ({}, "say which trial"),
        ({"trial": 1, "knee": True}, "not both"),
        ({"knee": True, "min_accuracy": 0.9}, "knee rule picks its own accuracy"),
        ({"min_accuracy": 0.9, "max_accuracy_drop": 0.1}, "not both"),
        ({"max_costs": {"flops": 0.5}}, "unknown cost 'flops' for a cap; available: macs, params, latency"),
        ({"max_costs": {"latency": 0.5}}, "recorded no latency: it cannot be capped"),
        ({"max_costs": {"macs": -1}}, "max macs must be a number > 0"),
        ({"max_accuracy_drop": -0.1}, "max_accuracy_drop must be a number >= 0"),
        ({"min_accuracy": float("nan")}, "min_accuracy must be a finite number"),
        ({"trial": 1.5}, "trial number must be an int"),
    ],
)
def test_choose_errors_say_what_is_wrong_and_the_closest_trial(toy, rule, message):
    with pytest.raises(RanksearchError, match=message):
        choose(toy, **rule)


def test_choose_in_a_study_without_completed_trials():
    with pytest.raises(RanksearchError, match="no completed trial"):
        choose(make_results([record(0, 0.1, 0.5, state="fail", failure="x")]), knee=True)


# --- figures and dashboard -------------------------------------------------------------------------
def test_figures_for_two_and_three_objectives(toy):
    figs = figures(toy)
    assert list(figs) == ["pareto_macs", "layers", "parallel", "hypervolume", "finetune"]
    scatter = figs["pareto_macs"]
    assert [t.name for t in scatter.data] == ["trials", "Pareto front (5)", "dense model"]
    assert list(scatter.data[2].x) == [1.0] and list(scatter.data[2].y) == [0.95]
    assert "conv1: svd r=4 (25%)" in scatter.data[1].hovertext[1]
    heatmap = figs["layers"].data[0]
    assert np.asarray(heatmap.z).shape == (5, len(LAYERS)) and list(heatmap.x) == list(LAYERS)
    assert heatmap.text[0][0] == "S" and heatmap.text[-1][0] == "·"
    assert [d["label"] for d in figs["parallel"].data[0].dimensions] == [*LAYERS, "accuracy"]
    three = make_results(toy_records(), objectives=("accuracy", "macs", "params"))
    assert list(figures(three))[:3] == ["pareto_macs", "pareto_params", "pareto_3d"]


def test_numeric_looking_layer_names_stay_names_in_the_figures():
    figs = figures(numeric_named_results())
    heatmap = figs["layers"]
    # a categorical axis of its own, not left to the template's autotypenumbers: ticks "0.0", "3", "10" as written,
    # where a linear axis would draw 0, 2, 4, ... 12
    assert heatmap.layout.xaxis.type == "category" and heatmap.layout.yaxis.type == "category"
    assert list(heatmap.data[0].x) == list(NUMERIC_NAMES) and all(type(x) is str for x in heatmap.data[0].x)
    labels = [d.label for d in figs["parallel"].data[0].dimensions]
    assert labels == [*NUMERIC_NAMES, "accuracy"] and all(type(label) is str for label in labels)
    hover = figs["pareto_macs"].data[1].hovertext[0]
    assert "0.0: svd r=4 (25%)" in hover and "10: cp r=4 (25%)" in hover


def test_dashboard_has_plotly_once_every_figure_and_the_pareto_table(toy):
    figs = figures(toy)
    page = dashboard_html(toy, figs, study_file="studies/toy.toml")
    assert page.count("* plotly.js v") == 1  # the library's banner: inlined once
    assert page.count('class="plotly-graph-div"') == len(figs)
    table = page[page.index('id="pareto-table"') :]
    assert table[: table.index("</table>")].count("<tr>") == 1 + len(toy.pareto())
    assert 'id="ranksearch-js-errors"' in page and "<script src=" not in page  # offline: nothing fetched
    assert "ranksearch export studies/toy.toml --knee" in page
    assert "reference point: accuracy 0, macs 1" in page


def test_dashboard_escapes_names():
    results = make_results(toy_records())
    results = StudyResults(**{**results.__dict__, "name": "<b>x</b>"})
    page = dashboard_html(results, {})
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_write_report_writes_tables_and_the_page(toy, tmp_path):
    files = write_report(toy, tmp_path / "out")
    names = {p.name for p in files.tables}
    assert {"trials.csv", "pareto.csv", "hypervolume.csv", "summary.json"} <= names
    assert ("trials.parquet" in names) != ("trials.json" in names)
    assert files.html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert list(trials["trial"]) == list(range(8)) and trials["is_pareto"].sum() == 6
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["pareto_trials"] == [4, 1, 2, 7, 0] and summary["hypervolume"] == pytest.approx(toy.hypervolume())


def test_without_pyarrow_trials_go_to_json_with_a_note(toy, tmp_path, monkeypatch):
    import ranksearch.report._writer as writer

    monkeypatch.setattr(writer, "_parquet_available", lambda: False)
    files = write_report(toy, tmp_path)
    assert (tmp_path / "trials.json").is_file() and not (tmp_path / "trials.parquet").exists()
    assert any("pyarrow" in note for note in files.notes)
    assert len(json.loads((tmp_path / "trials.json").read_text())) == 8


def test_parquet_round_trips_when_pyarrow_is_installed(toy, tmp_path):
    pytest.importorskip("pyarrow", reason="Parquet output needs pyarrow")
    write_report(toy, tmp_path)
    back = pd.read_parquet(tmp_path / "trials.parquet")
    assert list(back["trial"]) == list(range(8)) and list(back["method:conv1"])[:2] == ["dense", "svd"]


def test_a_report_folder_that_cannot_be_created(toy, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RanksearchError, match="cannot create the report folder"):
        write_report(toy, tmp_path / "file" / "sub")


def test_costlier_than_dense_trials_stay_off_the_default_axis():
    results = make_results([*toy_records(), record(3, 0.9, 2.5)])
    fig = figures(results)["pareto_macs"]
    assert tuple(fig.layout.xaxis.range) == (0, 1.1) and "1 trial(s) above 1.1x dense" in fig.layout.title.text
    assert figures(make_results(toy_records()))["pareto_macs"].layout.xaxis.range is None
