"""Fuzzing the two parsers users feed by hand: any input gives a result or a ranksearch error, never a traceback.

hypothesis draws arbitrary text, arbitrary JSON values and TOML-shaped documents (valid sections with
random keys and values); seeded through hypothesis's database-free profile so runs are reproducible.
"""

from __future__ import annotations

import contextlib
import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranksearch.config import CompressionConfig
from ranksearch.errors import RanksearchError
from ranksearch.studyfile import load_study_file

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(st.text(max_size=200))
def test_config_json_text(text):
    with contextlib.suppress(RanksearchError):
        CompressionConfig.from_json(text)


@FUZZ
@given(json_values)
def test_config_json_values(value):
    with contextlib.suppress(RanksearchError):
        CompressionConfig.from_json(json.dumps(value))


layer_entries = st.dictionaries(
    st.text(max_size=6),
    st.one_of(json_values, st.fixed_dictionaries({"method": scalars, "rank": json_values})),
    max_size=4,
)


@FUZZ
@given(layer_entries, st.one_of(st.just(1), scalars))
def test_config_documents_with_the_right_format_tag(layers, version):
    document = {"format": "ranksearch.compression-config", "version": version, "layers": layers}
    with contextlib.suppress(RanksearchError):
        CompressionConfig.from_json(json.dumps(document))


keys = st.sampled_from(
    ["name", "storage", "objectives", "n_trials", "timeout", "sampler", "seed", "warm_start", "path", "options",
     "batch_size", "eval_batch_size", "epochs", "lr", "methods", "rank_fractions", "rank_multiple", "include",
     "exclude", "overrides", "finetune_steps", "device", "threads", "dtype", "repeats", "bogus"]
)  # fmt: skip
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(-10, 10, allow_nan=False),
    st.text(alphabet=string.ascii_letters + "_-./ ", max_size=10),
)
toml_values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=3))
sections = st.sampled_from(["study", "model", "data", "training", "space", "evaluator", "latency", "extra"])


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


@FUZZ
@given(st.dictionaries(sections, st.dictionaries(keys, toml_values, max_size=4), max_size=5))
def test_study_files_of_random_sections_and_values(tmp_path_factory, document):
    text = "\n".join(
        f"[{section}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in table.items())
        for section, table in document.items()
    )
    path = tmp_path_factory.mktemp("fuzz") / "study.toml"
    path.write_text(text)
    with contextlib.suppress(RanksearchError):
        load_study_file(path)


@FUZZ
@given(st.text(max_size=200))
def test_study_files_of_arbitrary_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "study.toml"
    path.write_text(text, encoding="utf-8")
    with contextlib.suppress(RanksearchError):
        load_study_file(path)


def test_the_fuzzers_reach_valid_inputs_too():
    """Guard against a fuzzer that only ever produces errors: a valid document parses."""
    config = CompressionConfig.from_json(
        json.dumps(
            {"format": "ranksearch.compression-config", "version": 1, "layers": {"a": {"method": "svd", "rank": 2}}}
        )
    )
    assert config["a"] == ("svd", 2)
    with pytest.raises(RanksearchError):
        CompressionConfig.from_json("{")
