"""finetune_epochs: full-epoch SGD with cosine decay for the exported model; clear errors on bad settings.

The training problem is two well separated Gaussian blobs in 2-D (64 points, seeded) and a Linear
classifier. At lr 0.02 the epoch losses are about 1.90, 0.62, 0.15, 0.09: the test asks each to be below
0.9 x the one before and the last to be under a third of the first (wide margins, the run is seeded).
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ranksearch as rs
from ranksearch.finetune import finetune_epochs


def blobs(n: int = 64, batch: int = 16, extra: bool = False) -> list[tuple[torch.Tensor, ...]]:
    """Seeded, linearly separable 2-class data as a list of batches (a list has a len, like a DataLoader)."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(n) % 2
    inputs = torch.randn(n, 2, generator=generator) * 0.5 + (targets[:, None] * 2 - 1) * torch.tensor([2.0, 1.0])
    batches = list(zip(inputs.split(batch), targets.split(batch), strict=True))
    return [(x, y, torch.zeros(len(y))) for x, y in batches] if extra else batches


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2))


def test_loss_falls_every_epoch_and_the_model_ends_in_eval_mode():
    model, lines = classifier().eval(), []
    before = [p.clone() for p in model.parameters()]
    losses = finetune_epochs(model, blobs(), epochs=4, lr=0.02, log=lines.append)
    assert len(losses) == 4 and all(isinstance(loss, float) and math.isfinite(loss) for loss in losses)
    assert all(later < 0.9 * earlier for earlier, later in itertools.pairwise(losses))
    assert losses[-1] < losses[0] / 3
    assert not model.training
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))  # trained in place
    with torch.no_grad():
        accuracy = torch.cat([(model(x).argmax(1) == y) for x, y in blobs()]).float().mean()
    assert accuracy == 1.0


def test_one_log_line_per_epoch_with_its_mean_loss():
    lines = []
    losses = finetune_epochs(classifier(), blobs(), epochs=3, lr=0.05, log=lines.append)
    assert len(lines) == 3
    for epoch, (line, loss) in enumerate(zip(lines, losses, strict=True), start=1):
        match = re.fullmatch(rf"fine-tune epoch {epoch}/3: loss (\d+\.\d{{4}}) \(\d+\.\d s\)", line)
        assert match is not None, line
        assert float(match.group(1)) == pytest.approx(loss, abs=5e-5)  # printed with 4 decimals


def test_the_loss_is_the_sample_weighted_mean_of_the_epoch():
    """One epoch at a tiny lr: the reported loss is the mean over all samples (batches of unequal size)."""
    model = classifier()
    data = blobs(n=40, batch=16)  # batches of 16, 16 and 8
    with torch.no_grad():
        initial = torch.cat([F.cross_entropy(model(x), y, reduction="none") for x, y in data]).mean().item()
    (loss,) = finetune_epochs(model, data, epochs=1, lr=1e-9, log=lambda line: None)
    assert loss == pytest.approx(initial, rel=1e-6)


def test_extra_items_in_a_batch_are_ignored_and_a_custom_loss_is_used():
    seen = []

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seen.append(outputs.shape)
        return F.cross_entropy(outputs, targets)

    losses = finetune_epochs(classifier(), blobs(extra=True), epochs=2, lr=0.1, loss_fn=loss_fn, log=lambda s: None)
    assert len(losses) == 2 and losses[1] < losses[0]
    assert seen == [torch.Size([16, 2])] * 8  # 4 batches x 2 epochs


def test_the_learning_rate_follows_a_cosine_from_lr_to_zero(monkeypatch):
    recorded = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            recorded.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    finetune_epochs(classifier(), blobs(), epochs=3, lr=0.2, log=lambda s: None)
    total = 3 * 4
    expected = [0.2 * 0.5 * (1 + math.cos(math.pi * step / total)) for step in range(total)]
    assert recorded == pytest.approx(expected, rel=1e-12)
    assert recorded[0] == 0.2 and all(b < a for a, b in itertools.pairwise(recorded)) and recorded[-1] > 0


@pytest.mark.parametrize("epochs", [0, -1, 1.5, 2.0, True, "3", None])
def test_bad_epochs_are_refused_before_training(epochs):
    model = classifier()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(rs.RanksearchError, match=rf"epochs must be an int >= 1, got {re.escape(repr(epochs))}$"):
        finetune_epochs(model, blobs(), epochs=epochs, log=lambda s: None)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("lr", [0, 0.0, -0.1, float("nan"), float("inf"), True, "0.1", None])
def test_bad_lr_is_refused_before_training(lr):
    model = classifier()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(rs.RanksearchError, match=rf"lr must be a finite number > 0, got {re.escape(repr(lr))}$"):
        finetune_epochs(model, blobs(), epochs=1, lr=lr, log=lambda s: None)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_a_nan_loss_says_where_and_suggests_a_lower_lr():
    lines = []
    with pytest.raises(rs.RanksearchError, match=r"fine-tune loss became nan at epoch 1, step 0: try a lower lr$"):
        finetune_epochs(
            classifier(), blobs(), epochs=2, loss_fn=lambda out, y: out.sum() * float("nan"), log=lines.append
        )
    assert lines == []


def test_a_diverging_lr_is_caught():
    """Squared error grows geometrically at lr 100 (over 1e16 after one epoch) until it overflows."""
    lines = []

    def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs, F.one_hot(targets, 2).float())

    with pytest.raises(
        rs.RanksearchError, match=r"fine-tune loss became (nan|inf) at epoch \d+, step \d+: try a lower lr$"
    ):
        finetune_epochs(classifier(), blobs(), epochs=10, lr=100.0, loss_fn=squared_error, log=lines.append)
    assert 1 <= len(lines) < 10


def test_the_model_is_back_in_eval_mode_after_a_failure():
    model = classifier()
    with pytest.raises(rs.RanksearchError, match="try a lower lr"):
        finetune_epochs(model, blobs(), epochs=1, loss_fn=lambda out, y: out.sum() * float("nan"), log=print)
    assert not model.training


@pytest.mark.parametrize(
    ("loader", "message"),
    [([], "train_loader is empty"), ((b for b in blobs()), "train_loader must have a length")],
)
def test_loaders_that_cannot_be_trained_on(loader, message):
    with pytest.raises(rs.RanksearchError, match=message):
        finetune_epochs(classifier(), loader, epochs=1)


def test_grad_clip_bounds_each_step_to_lr_times_the_clip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.mul_(50.0)  # a large loss: its gradient norm is far above the clip
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    batch = [blobs()[0]]
    finetune_epochs(model, batch, epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0, grad_clip=0.5, log=str)
    step = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    # one step at lr 0.1 (the cosine starts at lr): |step| = lr * min(|grad|, clip) = 0.05
    assert float(step.norm()) == pytest.approx(0.05, rel=1e-5)


@pytest.mark.parametrize("clip", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_bad_grad_clip_is_refused_before_training(clip):
    model = classifier()
    before = [p.clone() for p in model.parameters()]
    message = rf"grad_clip must be a finite number > 0 or None, got {re.escape(repr(clip))}$"
    with pytest.raises(rs.RanksearchError, match=message):
        finetune_epochs(model, blobs(), epochs=1, grad_clip=clip, log=lambda s: None)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_export_fine_tunes_with_the_studys_grad_clip_and_distillation(tiny_task, make_search, tmp_path, monkeypatch):
    import dataclasses

    import ranksearch.export as export_module

    calls = []
    real = export_module.finetune_epochs
    monkeypatch.setattr(export_module, "finetune_epochs", lambda *a, **k: calls.append(k) or real(*a, **k))
    search = make_search(tiny_task)
    search.evaluator.settings = dataclasses.replace(search.evaluator.settings, grad_clip=0.5)
    search.optimize(2, show_progress=False)
    exported = search.export(tmp_path, knee=True, epochs=1, log=lambda line: None)
    assert [(call["grad_clip"], call["distill"]) for call in calls] == [(0.5, 0.5)]  # the default distillation
    assert exported.metadata["finetune_grad_clip"] == 0.5 and exported.metadata["finetune_distill"] == 0.5


def test_distill_blends_the_labels_loss_with_distillation_from_the_teacher():
    def one_step(**kwargs) -> torch.Tensor:
        model = classifier()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        finetune_epochs(model, [blobs()[0]], epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0, log=str, **kwargs)
        return torch.cat([p.detach().flatten() for p in model.parameters()]) - before

    labels_only = one_step()
    # a teacher equal to the student: the distillation term and its gradient are zero at the first step, so
    # the step is the labels' loss weighted by 1 - distill
    assert torch.allclose(one_step(distill=0.25, teacher=classifier()), 0.75 * labels_only, rtol=1e-5, atol=1e-8)
    # a different teacher pulls the step elsewhere
    torch.manual_seed(1)
    other = nn.Sequential(nn.Linear(2, 2))
    assert not torch.allclose(one_step(distill=0.25, teacher=other), 0.75 * labels_only, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distill": 1.5}, r"distill must be a number in \[0, 1\], got 1.5$"),
        ({"distill": True}, r"distill must be a number in \[0, 1\], got True$"),
        ({"distill": 0.5}, r"distill=0.5 blends in distillation from the dense model: pass it as teacher=...$"),
    ],
)
def test_bad_distill_is_refused_before_training(kwargs, message):
    model = classifier()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(rs.RanksearchError, match=message):
        finetune_epochs(model, blobs(), epochs=1, log=lambda s: None, **kwargs)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


class Interrupted(Exception):
    """Stands for a kill after an epoch's checkpoint is written."""


def shuffled_blobs() -> torch.utils.data.DataLoader:
    """The blobs through a shuffling DataLoader (its order draws from torch's generator, which a resume restores)."""
    inputs, targets = (torch.cat(parts) for parts in zip(*blobs(), strict=True))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=16, shuffle=True)


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_a_fine_tune_interrupted_after_an_epoch_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    torch.manual_seed(1)
    whole = classifier()
    torch.manual_seed(1)
    expected = finetune_epochs(whole, shuffled_blobs(), epochs=4, lr=0.05, log=str)

    def stop_after_two(line: str) -> None:
        if line.startswith("fine-tune epoch 2/4"):
            raise Interrupted

    checkpoint = tmp_path / "final.pt"
    resumed = classifier()
    torch.manual_seed(1)
    with pytest.raises(Interrupted):
        finetune_epochs(resumed, shuffled_blobs(), epochs=4, lr=0.05, log=stop_after_two, checkpoint=checkpoint)
    torch.manual_seed(123)  # whatever the generator did meanwhile, the resume restores it
    lines = []
    losses = finetune_epochs(classifier(), shuffled_blobs(), epochs=4, lr=0.05, log=lines.append,
                             checkpoint=checkpoint)  # fmt: skip
    assert [line.split(":")[0] for line in lines] == ["fine-tune epoch 3/4", "fine-tune epoch 4/4"]
    assert losses == pytest.approx(expected, rel=1e-6)
    again = classifier()
    assert (
        finetune_epochs(again, shuffled_blobs(), epochs=4, lr=0.05, log=lines.append, checkpoint=checkpoint) == losses
    )
    assert len(lines) == 2  # a finished checkpoint is loaded, not trained again
    assert torch.allclose(weights(again), weights(whole), rtol=1e-6, atol=1e-7)
    assert not any(path.name.endswith(".partial") for path in tmp_path.iterdir())


def test_a_checkpoint_of_another_fine_tune_is_refused_with_what_differs(tmp_path):
    checkpoint = tmp_path / "final.pt"
    finetune_epochs(classifier(), blobs(), epochs=2, lr=0.05, log=str, checkpoint=checkpoint)
    with pytest.raises(rs.RanksearchError, match=r"written with \{'epochs': 2, .*this fine-tune has \{'epochs': 3"):
        finetune_epochs(classifier(), blobs(), epochs=3, lr=0.05, log=str, checkpoint=checkpoint)
    with pytest.raises(rs.RanksearchError, match=r"final.pt holds another model"):
        finetune_epochs(nn.Sequential(nn.Linear(2, 3)), blobs(), epochs=2, lr=0.05, log=str, checkpoint=checkpoint)
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(rs.RanksearchError, match=r"cannot read the fine-tune checkpoint .*final.pt"):
        finetune_epochs(classifier(), blobs(), epochs=2, lr=0.05, log=str, checkpoint=checkpoint)


def test_an_interrupted_export_fine_tune_resumes_where_it_stopped(tiny_task, make_search, tmp_path):
    from ranksearch.data import digits, make_loaders

    train_loader, val_loader = make_loaders(digits(image_size=8), batch_size=32, eval_batch_size=120, seed=0)
    search = make_search((tiny_task[0], train_loader, val_loader))  # its own loaders: their order is reset below
    search.optimize(2, show_progress=False)
    torch.manual_seed(0), train_loader.generator.manual_seed(0)
    whole = search.export(tmp_path / "whole", knee=True, epochs=3, log=lambda line: None)

    def stop_after_two(line: str) -> None:
        if line.startswith("fine-tune epoch 2/3"):
            raise Interrupted

    torch.manual_seed(0), train_loader.generator.manual_seed(0)
    with pytest.raises(Interrupted):
        search.export(tmp_path / "resumed", knee=True, epochs=3, log=stop_after_two)
    torch.manual_seed(1), train_loader.generator.manual_seed(1)  # the resume restores both generators
    assert [p.name.startswith(".finetune-") for p in (tmp_path / "resumed").iterdir()] == [True]  # no model yet
    lines = []
    resumed = search.export(tmp_path / "resumed", knee=True, epochs=3, log=lines.append)
    assert any(line.startswith("resuming the fine-tune from ") for line in lines)
    assert [line.split(":")[0] for line in lines if line.startswith("fine-tune epoch")] == ["fine-tune epoch 3/3"]
    assert torch.allclose(weights(resumed.model), weights(whole.model), rtol=1e-6, atol=1e-7)
    assert resumed.metadata["accuracy"] == pytest.approx(whole.metadata["accuracy"], abs=1e-9)
    assert not any(p.name.startswith(".finetune-") for p in (tmp_path / "resumed").iterdir())  # removed once saved
