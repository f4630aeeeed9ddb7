"""Study files: the ready ones parse, and every kind of bad file gets a message naming the key."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ranksearch as rs
from ranksearch.studyfile import load_study_file

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.toml"))
MINIMAL = '[model]\nname = "small_cnn"\n[data]\nname = "digits"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_ready_study_files_parse(path):
    study = load_study_file(path)
    assert study.study.name == path.stem and study.storage.startswith("sqlite:///runs/")


def test_defaults_and_conversions(tmp_path):
    text = MINIMAL + '[space]\nrank_fractions = [0.25, 1]\noverrides = { fc = ["dense", "svd"] }\n[evaluator]\nlr = 1\n'
    study = load_study_file(write(tmp_path, text))
    assert study.study.name == "s" and study.storage == "sqlite:///runs/s.db"
    assert study.space.rank_fractions == (0.25, 1.0) and study.space.overrides == {"fc": ("dense", "svd")}
    assert study.evaluator.lr == 1.0 and isinstance(study.evaluator.lr, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the study file is empty"),
        ("[model\nname=1", "not valid TOML"),
        (MINIMAL + "[search]\n", r"unknown section \[search\]"),
        (
            MINIMAL + "[evaluator]\nfinetune_stpes = 3\n",
            r"\[evaluator\]: unknown key 'finetune_stpes'; did you mean 'finetune_steps'\?",
        ),
        (MINIMAL + "[evaluator]\nzzz = 3\n", r"\[evaluator\]: unknown key 'zzz' \(valid: finetune_steps, lr"),
        (
            MINIMAL + '[evaluator]\nfinetune_steps = "30"\n',
            r"\[evaluator\]: finetune_steps must be an int, got '30' \(str\)",
        ),
        (
            MINIMAL + "[evaluator]\nfinetune_steps = -3\n",
            r"\[evaluator\]: evaluator setting finetune_steps must be an int >= 0",
        ),
        (MINIMAL + "[evaluator]\nlr = true\n", r"lr must be a number, got True \(bool\)"),
        (MINIMAL + "[study]\nn_trials = 0\n", r"\[study\] n_trials must be >= 1, got 0"),
        (MINIMAL + "[study]\nn_trials = 2.5\n", r"\[study\]: n_trials must be an int, got 2.5"),
        (MINIMAL + "[study]\ntimeout = -1\n", r"timeout must be > 0 seconds"),
        (MINIMAL + '[study]\nobjectives = ["accuracy"]\n', "at least two distinct objectives"),
        (MINIMAL + '[study]\nobjectives = ["accuracy", "energy"]\n', "unknown objective 'energy'"),
        (MINIMAL + '[study]\nobjectives = "accuracy"\n', r"objectives must be a list of strings, got 'accuracy'"),
        (MINIMAL + '[study]\nsampler = "grid"\n', "unknown sampler 'grid'"),
        (MINIMAL + '[space]\nmethods = ["svd", "qr"]\n', r"\[space\]: unknown method 'qr'"),
        (MINIMAL + "[space]\nrank_fractions = [0.5, 1.5]\n", r"rank fractions must be numbers in \(0, 1\], got 1.5"),
        (MINIMAL + "[space]\nrank_fractions = [-0.5]\n", r"rank fractions must be numbers in \(0, 1\]"),
        (MINIMAL + "[training]\nepochs = 0\n", r"\[training\]: training setting epochs must be an int >= 1"),
        (MINIMAL + "[training]\ncache_dir = 3\n", r"\[training\] cache_dir must be a string"),
        ('[model]\nname = "m"\n[data]\nbatch_size = 0\n', r"\[data\] batch_size must be >= 1"),
        ('[data]\nname = "digits"\n', r"\[model\] needs exactly one of 'name' \(a built-in model\), 'path', 'factory'"),
        ('[model]\nname = "a"\npath = "b"\n', r"\[model\] needs exactly one of"),
        ("study = 3\n", r"\[study\] must be a table, got int"),
    ],
)
def test_bad_study_files_name_the_key(tmp_path, text, message):
    with pytest.raises(rs.RanksearchError, match=message):
        load_study_file(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(rs.RanksearchError, match=r"cannot read study file .*nope\.toml.*No such file"):
        load_study_file(tmp_path / "nope.toml")


toml_scalars = st.one_of(
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.booleans(),
    st.lists(st.integers(-2, 2), max_size=3),
)
sections = st.dictionaries(
    st.sampled_from(["study", "model", "data", "space", "evaluator", "training", "extra"]),
    st.dictionaries(st.sampled_from(["name", "lr", "methods", "n_trials", "epochs", "x"]), toml_scalars, max_size=3),
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(sections)
def test_fuzzed_study_files_give_a_result_or_a_ranksearch_error(tmp_path_factory, document):
    lines = []
    for section, table in document.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {_toml(value)}")
    path = tmp_path_factory.mktemp("fuzz") / "f.toml"
    path.write_text("\n".join(lines) + "\n")
    with contextlib.suppress(rs.RanksearchError):
        load_study_file(path)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def test_renamed_section_and_key_still_work_with_a_future_warning(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text(MINIMAL + "[study]\nwarm_start_baselines = [0.5]\n[baseline]\nepochs = 3\ncache_dir = 'c'\n")
    with pytest.warns(FutureWarning) as caught:
        study_file = load_study_file(path)
    messages = sorted(str(w.message) for w in caught)
    assert messages[0].endswith("[baseline] is now called [training]; rename the section")
    assert messages[1].endswith("[study] warm_start_baselines is now called warm_start_heuristics; rename the key")
    assert study_file.training.train.epochs == 3 and study_file.training.cache_dir == "c"
    assert study_file.study.warm_start_heuristics == (0.5,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[baseline]\n[training]\n", r"\[baseline\] is the old name of \[training\]: give only \[training\]"),
        (
            "[study]\nwarm_start_baselines = [0.5]\nwarm_start_heuristics = [0.5]\n",
            r"\[study\] warm_start_baselines is the old name of warm_start_heuristics: give only",
        ),
    ],
)
def test_old_and_new_names_together_are_an_error(tmp_path, text, message):
    path = tmp_path / "both.toml"
    path.write_text(MINIMAL + text)
    with pytest.raises(rs.RanksearchError, match=message):
        load_study_file(path)
