"""Data-aware methods in the product: evaluator settings, the search space, study files, report and export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import ranksearch as rs
from ranksearch.evaluator import Evaluator, EvaluatorSettings
from ranksearch.export import export_config
from ranksearch.studyfile import load_study_file

FAST = EvaluatorSettings(finetune_steps=2, bn_batches=1, eval_batches=1)
MINIMAL = '[model]\nname = "small_cnn"\n[data]\nname = "digits"\n'


def test_the_evaluator_calibrates_on_its_fixed_training_batches(tiny_task):
    model, train_loader, val_loader = tiny_task
    evaluator = Evaluator(model, train_loader, val_loader, dataclasses.replace(FAST, calibration_batches=2))
    calibration = evaluator.calibration
    assert set(calibration) == set(rs.compressible_layers(model)) and calibration.batches == 2
    same = rs.calibrate(model, train_loader, batches=2)  # the same draw: seed 0, the loader's own order
    assert calibration.data_digest == same.data_digest
    layer = next(iter(calibration))
    config = rs.CompressionConfig({layer: ("svd_whiten", 2)})
    result = evaluator.evaluate(config)
    assert result.failure is None and result.data_aware_layers == [layer]
    assert "data_aware_layers" in result.to_attrs()
    assert Evaluator(model, train_loader, val_loader, FAST).calibration is None
    plain = Evaluator(model, train_loader, val_loader, FAST).evaluate(rs.CompressionConfig({layer: ("svd", 2)}))
    assert plain.data_aware_layers is None and "data_aware_layers" not in plain.to_attrs()  # stored as before


def test_a_search_offers_plain_and_data_aware_methods_per_layer(tiny_task, make_search):
    space = rs.SearchSpace(methods=("dense", "svd", "svd_whiten"), rank_fractions=(0.25, 0.5))
    search = make_search(tiny_task, space=space, evaluator=dataclasses.replace(FAST, calibration_batches=1))
    assert all({"svd", "svd_whiten"} <= set(layer.methods) for layer in search.layers.values())
    search.optimize(6, show_progress=False)
    table = search.trials_dataframe()
    expected = [int(s.split("svd_whiten:")[1].split()[0]) if "svd_whiten:" in s else 0 for s in table["methods"]]
    assert list(table["data_aware_layers"]) == expected and len(expected) == 6
    assert any(expected), "no trial chose a data-aware method"


def test_a_search_with_data_aware_methods_and_no_calibration_says_how_to_give_it(tiny_task, make_search):
    space = rs.SearchSpace(methods=("dense", "svd", "tucker2_whiten"))
    with pytest.raises(rs.RanksearchError, match=r"data-aware methods \(tucker2_whiten\) need calibration data"):
        make_search(tiny_task, space=space)
    calibration = rs.calibrate(tiny_task[0], tiny_task[1], batches=1)
    search = make_search(tiny_task, space=space, calibration=calibration)
    assert search.evaluator.calibration is calibration


def test_export_records_what_the_weights_depend_on(tiny_task, tmp_path):
    model, train_loader, val_loader = tiny_task
    evaluator = Evaluator(model, train_loader, val_loader, dataclasses.replace(FAST, calibration_batches=1))
    layer = next(iter(evaluator.calibration))
    lines: list[str] = []
    exported = export_config(
        evaluator, rs.CompressionConfig({layer: ("svd_whiten", 2)}), tmp_path / "out", log=lines.append
    )
    facts = exported.metadata["data_aware"]
    assert facts["layers"] == [layer] and facts["calibration_batches"] == 1
    assert facts["calibration_digest"] == evaluator.calibration.data_digest
    assert any("1 layer(s) data-aware" in line for line in lines)
    loaded = rs.load(exported.model_path, base_model=model)  # the saved weights need no calibration
    x = next(iter(val_loader))[0][:4]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), exported.model.eval()(x))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_the_calibration_section_sets_the_evaluator(tmp_path):
    text = MINIMAL + '[space]\nmethods = ["dense", "svd", "svd_whiten"]\n[calibration]\nbatches = 4\n'
    study = load_study_file(write(tmp_path, text))
    assert study.evaluator.calibration_batches == 4 and study.evaluator.calibration is None
    study = load_study_file(write(tmp_path, MINIMAL + '[calibration]\nbatches = 2\nfactory = "mine:loader"\n'))
    assert study.evaluator.calibration == "mine:loader"
    assert load_study_file(write(tmp_path, MINIMAL)).evaluator.calibration_batches == 0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("[calibration]\n", r"\[calibration\] needs batches = N"),
        ("[calibration]\nbatches = 0\n", r"\[calibration\] batches must be an int >= 1, got 0"),
        ('[calibration]\nbatches = "8"\n', r"\[calibration\] batches must be an int >= 1, got '8'"),
        (
            "[calibration]\nbatches = 2\nsamples = 3\n",
            r"\[calibration\]: unknown key 'samples' \(valid: batches, factory\)",
        ),
        ('[calibration]\nbatches = 2\nfactory = "no colon"\n', r"\[calibration\] factory"),
        ("calibration = 3\n", r"\[calibration\] must be a table"),
        (
            "[evaluator]\ncalibration_batches = 3\n[calibration]\nbatches = 2\n",
            r"\[calibration\] batches and \[evaluator\] calibration_batches say the same thing",
        ),
    ],
)
def test_bad_calibration_sections_name_the_key(tmp_path, section, message):
    text = section + MINIMAL if section.startswith("calibration =") else MINIMAL + section  # a top-level key
    with pytest.raises(rs.RanksearchError, match=message):
        load_study_file(write(tmp_path, text))
