"""CompressionConfig: construction, exact JSON round trip, and every malformed input."""

from __future__ import annotations

import contextlib
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ranksearch as rs
from ranksearch.decompositions import available_methods

AVAILABLE = re.escape(", ".join(available_methods()))

ranks = st.one_of(st.integers(1, 10_000), st.tuples(st.integers(1, 512), st.integers(1, 512)))
entries = st.one_of(
    st.tuples(st.sampled_from(available_methods()), ranks),
    st.just(("dense", None)),
)
configs = st.dictionaries(st.text(min_size=1, max_size=20), entries, max_size=8)


@settings(max_examples=100, deadline=None)
@given(configs)
def test_json_round_trip_is_exact(layers):
    config = rs.CompressionConfig(layers)
    again = rs.CompressionConfig.from_json(config.to_json())
    assert again == config
    assert dict(again) == dict(config) and list(again) == list(config)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_arbitrary_json_gives_a_config_or_a_config_error(value):
    with contextlib.suppress(rs.ConfigError):
        rs.CompressionConfig.from_json(json.dumps(value))


def test_tuple_ranks_come_back_as_tuples_and_dense_has_no_rank(tmp_path):
    config = rs.CompressionConfig({"a": ("tucker2", [4, 2]), "b": ("svd", 3), "c": "dense"})
    assert config["a"] == ("tucker2", (4, 2)) and config["c"] == ("dense", None)
    assert config.compressed() == {"a": ("tucker2", (4, 2)), "b": ("svd", 3)}
    path = tmp_path / "cfg.json"
    config.save(path)
    assert rs.CompressionConfig.load(path) == config
    assert json.loads(path.read_text())["layers"]["a"] == {"method": "tucker2", "rank": [4, 2]}


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ({"a": ("svdd", 3)}, f"layer 'a': unknown method 'svdd'; available: {AVAILABLE} or 'dense'"),
        ({"a": ("svd",)}, r"layer 'a': expected a \(method, rank\) pair, got \('svd',\)"),
        ({"a": ("svd", "3")}, "layer 'a': rank must be an int or a list of ints, got '3'"),
        ({"a": ("svd", 2.5)}, "layer 'a': rank must be an int or a list of ints, got 2.5"),
        ({"a": ("svd", True)}, "layer 'a': rank must be an int or a list of ints, got True"),
        ({"a": ("svd", [])}, r"layer 'a': rank must be an int or a list of ints, got \[\]"),
        ({"a": ("dense", 4)}, "layer 'a': method 'dense' takes no rank, got 4"),
        ({"": ("svd", 4)}, "layer names must be non-empty strings"),
        ({3: ("svd", 4)}, "layer names must be non-empty strings, got 3"),
    ],
)
def test_bad_entries_name_the_layer_and_the_problem(layers, message):
    with pytest.raises(rs.ConfigError, match=message):
        rs.CompressionConfig(layers)


def test_not_a_mapping():
    with pytest.raises(rs.ConfigError, match="built from a mapping of layer names, got list"):
        rs.CompressionConfig([("a", ("svd", 3))])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "malformed compression config JSON: Expecting property name"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('{"layers": {}, "extra": 1}', "unknown key.*: extra"),
        ('{"format": "something-else", "layers": {}}', "not a compression config: format is 'something-else'"),
        ('{"version": 99, "layers": {}}', "unsupported compression config version 99"),
        ('{"format": "ranksearch.compression-config"}', "has no 'layers' object"),
        ('{"layers": []}', "'layers' must be an object"),
        ('{"layers": {"a": 3}}', "layer 'a': expected an object with 'method' and 'rank'"),
        ('{"layers": {"a": {"method": "svd", "rank": 3, "alpha": 1}}}', "layer 'a': unknown key.*alpha"),
        ('{"layers": {"a": {"method": "svd", "rank": 1.5}}}', "layer 'a': rank must be an int"),
    ],
)
def test_malformed_json_is_a_config_error(text, message):
    with pytest.raises(rs.ConfigError, match=message):
        rs.CompressionConfig.from_json(text)


def test_missing_file(tmp_path):
    with pytest.raises(rs.ConfigError, match=r"cannot read compression config .*nope\.json"):
        rs.CompressionConfig.load(tmp_path / "nope.json")
