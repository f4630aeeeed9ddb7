"""Study files: the search keys ([study] strategy, targets, screen; [space] grid, cost_fractions; [evaluator]
distill, distill_temperature) parse to the values the Python API takes, and bad values name file, section, key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import ranksearch as rs
from ranksearch.objectives import DEFAULT_SCREEN, DEFAULT_STRATEGY, check_targets
from ranksearch.space import DEFAULT_COST_FRACTIONS, DEFAULT_FRACTIONS
from ranksearch.studyfile import load_study_file, load_study_section

MINIMAL = '[model]\nname = "small_cnn"\n[data]\nname = "digits"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "search.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_allocate_strategy_on_the_cost_grid_with_the_default_distillation(tmp_path):
    study = load_study_file(write(tmp_path, MINIMAL))
    assert (study.study.strategy, study.study.targets, study.study.screen) == (DEFAULT_STRATEGY, {}, DEFAULT_SCREEN)
    assert DEFAULT_STRATEGY == "allocate" and DEFAULT_SCREEN == 8
    assert study.space.grid == "cost" and study.space.fractions == DEFAULT_COST_FRACTIONS
    assert (study.evaluator.distill, study.evaluator.distill_temperature) == (None, 4.0)  # 0.5 with cross-entropy


def test_good_values_are_parsed(tmp_path):
    text = (
        '[study]\nstrategy = "per-layer"\ntargets = { macs = [0.5, 0.25], latency = 0.4 }\nscreen = 3\n'
        + MINIMAL
        + '[space]\ngrid = "rank"\ncost_fractions = [0.1, 0.5]\n'
        + "[evaluator]\ndistill = 1\ndistill_temperature = 2\n"
    )
    study = load_study_file(write(tmp_path, text))
    assert (study.study.strategy, study.study.screen) == ("per-layer", 3)
    assert study.study.targets == {"macs": [0.5, 0.25], "latency": 0.4}  # as written; RankSearch checks and sorts
    assert check_targets(study.study.targets) == {"macs": (0.25, 0.5), "latency": (0.4,)}
    assert study.space.grid == "rank" and study.space.cost_fractions == (0.1, 0.5)
    assert study.space.fractions == DEFAULT_FRACTIONS  # the rank grid's, as no rank_fractions are given
    assert study.evaluator.distill == 1.0 and isinstance(study.evaluator.distill, float)
    assert study.evaluator.distill_temperature == 2.0 and isinstance(study.evaluator.distill_temperature, float)
    section = load_study_section(write(tmp_path, '[study]\nstrategy = "allocate"\ntargets = { params = [0.3] }\n'))
    assert (section.strategy, section.targets, section.screen) == ("allocate", {"params": [0.3]}, DEFAULT_SCREEN)


def test_grid_follows_the_fractions_given(tmp_path):
    ranked = load_study_file(write(tmp_path, MINIMAL + "[space]\nrank_fractions = [0.25, 0.5]\n"))
    assert ranked.space.grid == "rank" and ranked.space.fractions == (0.25, 0.5)
    costed = load_study_file(write(tmp_path, MINIMAL + "[space]\ncost_fractions = [0.2, 0.4]\n"))
    assert costed.space.grid == "cost" and costed.space.fractions == (0.2, 0.4)
    both = load_study_file(write(tmp_path, MINIMAL + '[space]\ngrid = "cost"\nrank_fractions = [0.5]\n'))
    assert both.space.grid == "cost" and both.space.fractions == DEFAULT_COST_FRACTIONS


STUDY_ERRORS = [
    ('strategy = "greedy"', r"\[study\] unknown strategy 'greedy'; available: allocate, per-layer"),
    ("strategy = 3", r"\[study\]: strategy must be a string, got 3 \(int\)"),
    ("targets = { flops = [0.5] }", r"\[study\] unknown target cost 'flops'; available: macs, params, latency"),
    ("targets = { macs = [1.5] }", r"\[study\] targets macs must be fractions of dense in \(0, 1\), got 1.5"),
    ("targets = { macs = [0.0] }", r"\[study\] targets macs must be fractions of dense in \(0, 1\), got 0.0"),
    ("targets = { macs = [true] }", r"\[study\] targets macs must be fractions of dense in \(0, 1\), got True"),
    ("targets = { macs = [] }", r"\[study\] targets macs must be a non-empty list of fractions, got \[\]"),
    ('targets = { macs = "half" }', r"\[study\] targets macs must be a non-empty list of fractions, got 'half'"),
    ("targets = [0.5]", r"\[study\]: targets must be a table, got \[0.5\] \(list\)"),
    ("screen = 0", r"\[study\] screen must be an int >= 1 \(candidates per trial\), got 0"),
    ("screen = 2.5", r"\[study\]: screen must be an int, got 2.5 \(float\)"),
    ("screen = true", r"\[study\]: screen must be an int, got True \(bool\)"),
    ("scren = 3", r"\[study\]: unknown key 'scren'; did you mean 'screen'\?"),
]
SPACE_ERRORS = [
    ('grid = "log"', r"\[space\]: grid must be one of cost, rank, got 'log'"),
    ("grid = 1", r"\[space\]: grid must be a string, got 1 \(int\)"),
    ("cost_fractions = [0.5, 1.0]", r"\[space\]: cost[_ ]fractions must be numbers in \(0, 1\), got 1.0"),
    ("cost_fractions = [-0.5]", r"\[space\]: cost[_ ]fractions must be numbers in \(0, 1\), got -0.5"),
    ("cost_fractions = []", r"\[space\]: cost_fractions must not be empty"),
    ("cost_fractions = [0.5, 0.5]", r"\[space\]: cost_fractions has duplicates: \[0.5, 0.5\]"),
    ("cost_fractions = 0.5", r"\[space\]: cost_fractions must be a list of numbers, got 0.5 \(float\)"),
    ('cost_fractions = ["0.5"]', r"\[space\]: cost_fractions must be a list of numbers, got \['0.5'\] \(list\)"),
    ("cost_fraction = [0.5]", r"\[space\]: unknown key 'cost_fraction'; did you mean 'cost_fractions'\?"),
]
EVALUATOR_ERRORS = [
    ("distill = 2", r"\[evaluator\]: evaluator setting distill must be a number in \[0, 1\], got 2.0"),
    ("distill = -0.5", r"\[evaluator\]: evaluator setting distill must be a number in \[0, 1\], got -0.5"),
    ("distill = true", r"\[evaluator\]: distill must be a number, got True \(bool\)"),
    ('distill = "half"', r"\[evaluator\]: distill must be a number, got 'half' \(str\)"),
    ("distill_temperature = 0", r"\[evaluator\]: evaluator setting distill_temperature must be a finite number > 0"),
    ("distill_temperature = inf", r"\[evaluator\]: .*distill_temperature must be a finite number > 0, got inf"),
    ("distill_temperature = nan", r"\[evaluator\]: .*distill_temperature must be a finite number > 0, got nan"),
    ("distill_temperature = -2.0", r"\[evaluator\]: .*distill_temperature must be a finite number > 0, got -2.0"),
]


@pytest.mark.parametrize(
    ("section", "line", "message"),
    [("study", *e) for e in STUDY_ERRORS]
    + [("space", *e) for e in SPACE_ERRORS]
    + [("evaluator", *e) for e in EVALUATOR_ERRORS],
)
def test_bad_values_name_the_file_the_section_and_the_key(tmp_path, section, line, message):
    path = write(tmp_path, MINIMAL + f"[{section}]\n{line}\n")
    with pytest.raises(rs.RanksearchError, match=re.escape(str(path)) + ": " + message):
        load_study_file(path)
    if section == "study":  # reading [study] alone (a stored study's report) checks it the same way
        with pytest.raises(rs.RanksearchError, match=re.escape(str(path)) + ": " + message):
            load_study_section(path)
