"""Training of the dense baseline resumes from its per-epoch checkpoint with the same result."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ranksearch.training import TrainSettings, load_or_train, train


class _Stop(Exception):
    pass


def _task() -> tuple[TensorDataset, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(96, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 3, (96,), generator=generator)
    data = TensorDataset(images, labels)
    return data, DataLoader(data, batch_size=32)


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))


def _stop_after(epoch: int):
    def log(line: str) -> None:
        if line.strip().startswith(f"epoch {epoch}/"):
            raise _Stop

    return log


SETTINGS = TrainSettings(epochs=3, lr=0.05, batch_size=16, augment=True)


def test_an_interrupted_training_resumes_to_the_same_weights(tmp_path):
    data, _ = _task()
    reference = train(_model(), data, SETTINGS).state_dict()

    checkpoint = tmp_path / "run.partial"
    with pytest.raises(_Stop):
        train(_model(), data, SETTINGS, log=_stop_after(1), checkpoint=checkpoint)
    assert checkpoint.exists()
    lines = []
    resumed = train(_model(), data, SETTINGS, log=lines.append, checkpoint=checkpoint).state_dict()

    assert lines[0].strip().startswith("resuming after epoch 1/3")
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["epoch 2/3", "epoch 3/3"]
    for name, tensor in reference.items():
        assert torch.equal(tensor, resumed[name]), name  # bit for bit, BatchNorm statistics included


def test_a_checkpoint_of_other_settings_is_not_used(tmp_path):
    data, _ = _task()
    checkpoint = tmp_path / "run.partial"
    with pytest.raises(_Stop):
        train(_model(), data, SETTINGS, log=_stop_after(1), checkpoint=checkpoint)
    other = TrainSettings(epochs=3, lr=0.1, batch_size=16, augment=True)
    with pytest.warns(UserWarning, match="not usable .*other training settings.*training from the start"):
        trained = train(_model(), data, other, checkpoint=checkpoint).state_dict()
    reference = train(_model(), data, other).state_dict()
    assert all(torch.equal(reference[name], trained[name]) for name in reference)


def test_load_or_train_resumes_and_removes_the_checkpoint(tmp_path):
    data, val_loader = _task()
    with pytest.raises(_Stop):
        load_or_train(_model(), {"model": "tiny"}, data, val_loader, SETTINGS, tmp_path, log=_stop_after(2))
    (partial,) = tmp_path.glob("*.partial")
    lines = []
    model, accuracy, path = load_or_train(_model(), {"model": "tiny"}, data, val_loader, SETTINGS, tmp_path,
                                          log=lines.append)  # fmt: skip
    assert any("resuming after epoch 2/3" in line for line in lines)
    assert path.exists() and not partial.exists()
    reference = train(_model(), data, SETTINGS)
    assert all(torch.equal(t, model.state_dict()[n]) for n, t in reference.state_dict().items())
    assert 0.0 <= accuracy <= 1.0
