"""`ranksearch run` end to end on a tiny study file: baseline cache, progress, front, resume, bad models."""

from __future__ import annotations

import pytest
import torch
from _helpers import write_study  # tests/ is on sys.path (pytest's prepend import mode)

from ranksearch.cli import main
from ranksearch.models import small_cnn

pytestmark = pytest.mark.slow  # whole studies through the CLI, with training


def test_run_trains_the_dense_model_once_and_resumes(tmp_path, capsys):
    path = write_study(tmp_path)
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "training the dense model small_cnn on digits for 1 epochs" in out and "  epoch 1/1: loss " in out
    assert "0/4 trials done, running 4" in out and "[4/4] trial 3:" in out
    assert "Pareto front (" in out and "accuracy_recalibrated" in out and "latency_ms" not in out
    assert len(list((tmp_path / "baselines").glob("small_cnn-*.pt"))) == 1
    assert main(["run", str(path), "--n-trials", "5"]) == 0
    out = capsys.readouterr().out
    assert "training the dense model" not in out and "4/5 trials done, running 1" in out and "[5/5] trial 4:" in out


def test_a_corrupt_trained_model_cache_is_retrained_with_a_warning(tmp_path, capsys):
    path = write_study(tmp_path)
    assert main(["run", str(path), "--n-trials", "1"]) == 0
    cached = next((tmp_path / "baselines").glob("*.pt"))
    cached.write_bytes(cached.read_bytes()[:100])
    with pytest.warns(UserWarning, match="is unreadable"):
        assert main(["run", str(path), "--n-trials", "1"]) == 0
    assert "training the dense model" in capsys.readouterr().out


def test_a_saved_user_model_runs_without_training(tmp_path, capsys):
    torch.save(small_cnn(in_channels=1, num_classes=10, width=4), tmp_path / "model.pt")
    path = write_study(tmp_path, model=f'path = "{tmp_path}/model.pt"')
    assert main(["run", str(path), "--n-trials", "2"]) == 0
    assert "training the dense model" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ('path = "{tmp}/missing.pt"', "path '.*missing.pt' does not exist"),
        ('path = "{tmp}/tensor.pt"', "holds a Tensor, not a torch.nn.Module"),
        ('path = "{tmp}/garbage.pt"', "cannot be loaded"),
        ('name = "small_cnn"\noptions = {{ depth = 3 }}', r"\[model\] options \{'depth': 3\} do not fit"),
        ('name = "vgg"', "unknown model 'vgg'; built-in models: small_cnn, resnet20, resnet18_cifar"),
    ],
)
def test_bad_models_exit_2_with_a_message(tmp_path, capsys, model, message):
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a pickle")
    path = write_study(tmp_path, model=model.format(tmp=tmp_path))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ranksearch: error: ")
    import re

    assert re.search(message, err), err


def test_bad_data_options_exit_2(tmp_path, capsys):
    path = write_study(tmp_path)
    path.write_text(path.read_text().replace("image_size = 8", "image_size = 4"))
    assert main(["run", str(path)]) == 2
    assert "[data]" in capsys.readouterr().err


def test_the_trained_model_is_the_same_whatever_the_global_rng_state(tmp_path):
    """The [training] seed fixes the initial weights too, so two fresh runs train the same model."""
    import dataclasses

    from ranksearch.data import load_dataset
    from ranksearch.runner import load_model
    from ranksearch.studyfile import load_study_file

    study = load_study_file(write_study(tmp_path))
    splits = load_dataset("digits", image_size=8)
    weights = []
    for run, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)
        fresh = dataclasses.replace(
            study, training=dataclasses.replace(study.training, cache_dir=str(tmp_path / f"b{run}"))
        )
        model = load_model(fresh, splits, log=lambda line: None)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
