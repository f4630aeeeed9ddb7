"""The trial-record schema: parameter names, measurements stored and read back, schema versions."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ranksearch.errors import RanksearchError
from ranksearch.evaluator import Evaluation
from ranksearch.record import (
    SCHEMA_VERSION,
    Measurements,
    TrialRecord,
    check_schema,
    param_name,
    parse_param_name,
    trial_attributes,
)


@pytest.mark.parametrize("layer", ["fc", "layer1.0.conv1", "0.0", "10", "a.b.c.d"])
@pytest.mark.parametrize("method", [None, "svd", "tucker2_hooi"])
def test_parameter_names_round_trip_with_dotted_layer_names(layer, method):
    assert parse_param_name(param_name(layer, method)) == (layer, method)


@pytest.mark.parametrize("name", ["fc", ".method", "fc.rank_fraction", "", "fc.svd.rank"])
def test_a_foreign_parameter_name_is_a_clear_error(name):
    with pytest.raises(RanksearchError, match="is not a ranksearch parameter name"):
        parse_param_name(name)


def test_measurements_round_trip_and_non_finite_values_are_stored_as_null():
    measured = Measurements(macs=10, params=4, macs_ratio=0.5, accuracy=0.75, layer_errors={"fc": 0.1})
    attrs = trial_attributes({"layers": {"fc": {"method": "svd", "rank": (2, 3)}}}, measured)
    assert attrs["accuracy_zero_shot"] is None  # NaN: JSON storages keep no NaN
    assert attrs["config"]["layers"]["fc"]["rank"] == [2, 3]
    back = Measurements.from_attrs(attrs)
    assert math.isnan(back.accuracy_zero_shot)
    assert dataclasses.replace(back, accuracy_zero_shot=0.0) == dataclasses.replace(measured, accuracy_zero_shot=0.0)


def test_older_and_newer_attributes_read_with_defaults_and_without_unknown_keys():
    back = Measurements.from_attrs({"accuracy": 0.5, "macs_ratio": 0.25, "a_future_measurement": 3})
    assert (back.accuracy, back.macs_ratio, back.params_ratio, back.failure) == (0.5, 0.25, 1.0, None)


def test_objectives_come_from_the_measurements():
    measured = Measurements(accuracy=0.9, macs_ratio=0.3, params_ratio=0.4, latency_ratio=0.8, fidelity=0.7)
    names = ("accuracy", "macs", "params", "latency", "fidelity")
    assert [measured.objective(o) for o in names] == [0.9, 0.3, 0.4, 0.8, 0.7]
    with pytest.raises(RanksearchError, match="unknown objective 'energy'"):
        measured.objective("energy")
    with pytest.raises(RanksearchError, match=r"objective 'fidelity' was not measured: .*objectives name it"):
        Measurements(accuracy=0.9).objective("fidelity")
    with pytest.raises(RanksearchError, match="objective 'accuracy' was not measured: the batches carry no labels"):
        Measurements(fidelity=0.5).objective("accuracy")


def test_a_measurement_only_some_studies_take_is_stored_only_when_measured():
    assert "fidelity" not in Measurements(accuracy=0.5).to_attrs()  # as trials stored before it existed
    assert Measurements(fidelity=0.25).to_attrs()["fidelity"] == 0.25
    assert Measurements.from_attrs({"accuracy": 0.5}).fidelity is None


def test_the_evaluation_is_the_measurements_plus_the_config_and_model():
    extra = {f.name for f in dataclasses.fields(Evaluation)} - {f.name for f in dataclasses.fields(Measurements)}
    assert issubclass(Evaluation, Measurements) and extra == {"config", "model"}


def test_typed_views_of_a_stored_trial():
    attrs = {"config": {"layers": {}}, "duplicate_of": 3, "accuracy": None}
    record = TrialRecord(5, "complete", (0.5, 0.5), {param_name("fc", "svd"): 0.25}, attrs)
    assert record.duplicate_of == 3 and math.isnan(record.measurements.accuracy)
    assert record.fraction("fc", "svd") == 0.25 and record.fraction("fc", "dense") == 1.0
    assert TrialRecord(6, "fail", None).config == {} and TrialRecord(6, "fail", None).duplicate_of is None


def test_schema_versions():
    assert check_schema(None, "study") == 0 and check_schema(SCHEMA_VERSION, "study") == SCHEMA_VERSION
    with pytest.raises(RanksearchError, match=r"written by a newer ranksearch .*upgrade ranksearch"):
        check_schema(SCHEMA_VERSION + 1, "study 's'")
    with pytest.raises(RanksearchError, match="is not a version number"):
        check_schema("1", "study 's'")
