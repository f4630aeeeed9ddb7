"""Fidelity: agreement with the dense model's outputs as an objective, and the label-free fine-tune.

Tolerances: agreement values built by hand are exact up to float32 rounding (1e-6); the dense model and
a full-rank SVD agree with it within 1e-6; a low-rank model agrees measurably less (< 0.999).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ranksearch as rs
from ranksearch.evaluator import Evaluator, EvaluatorSettings
from ranksearch.fidelity import agreement, distillation_loss, reference, resolve_kind
from ranksearch.finetune import finetune_epochs
from ranksearch.objectives import check_objectives
from ranksearch.record import Measurements
from ranksearch.screening import Screen

TOKENS, WIDTH, HIDDEN = 5, 12, 16
LABEL_FREE = EvaluatorSettings(finetune_steps=20, bn_batches=0, eval_batches=2, lr=0.05, weight_decay=0.0)


class Encoder(nn.Module):
    """An embedding model: ``(batch, tokens, width)`` in, hidden states of the same shape out (no labels)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(WIDTH, HIDDEN)
        self.down = nn.Linear(HIDDEN, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.tanh(self.up(x)))  # (B, T, W)


def unlabelled_loader(n: int, seed: int) -> DataLoader:
    """Batches of inputs only: the dataset yields 1-tuples, so each batch is ``[x]``."""
    x = torch.randn(n, TOKENS, WIDTH, generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(x), batch_size=16)


@pytest.fixture
def encoder_task():
    torch.manual_seed(0)
    model = Encoder()
    with torch.no_grad():
        for layer in (model.up, model.down):
            layer.weight.mul_(3.0)  # a strong residual branch: compressing it changes the outputs
    return model.eval(), unlabelled_loader(64, seed=1), unlabelled_loader(32, seed=2)


# --- the agreement measures ---------------------------------------------------------------------------------


def test_the_kind_follows_the_outputs():
    assert resolve_kind("auto", torch.zeros(4, 10)) == "top1"
    assert (
        resolve_kind("auto", torch.zeros(4, 1)) == "cosine" and resolve_kind("auto", torch.zeros(4, 3, 8)) == "cosine"
    )
    assert resolve_kind("kl", torch.zeros(4, 3, 8)) == "kl"


@pytest.mark.parametrize(
    ("kind", "shape", "message"),
    [
        ("top1", (4, 1), r"fidelity 'top1' compares class scores .* shape \(4, 1\); use fidelity 'cosine'"),
        ("kl", (4,), r"fidelity 'kl' compares class scores along the last dimension"),
        ("top5", (4, 3), r"unknown fidelity 'top5'; available: auto, top1, cosine, kl"),
    ],
)
def test_a_kind_that_does_not_fit_the_outputs_is_a_clear_error(kind, shape, message):
    with pytest.raises(rs.RanksearchError, match=message):
        resolve_kind(kind, torch.zeros(shape))


def test_agreement_values_by_hand():
    dense = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 2.0, 0.0]])
    flipped = dense.clone()
    flipped[3] = torch.tensor([2.0, 1.0, 0.0])  # one of four rows changes its argmax
    assert agreement(flipped, reference(dense, "top1"), "top1") == 0.75
    angle = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    turned = torch.tensor([[0.5, math.sqrt(3) / 2], [0.0, 1.0], [-1.0, 0.0]])  # cosines 0.5, 0 and -1 (clipped: 0)
    assert agreement(turned, reference(angle, "cosine"), "cosine") == pytest.approx(0.5 / 3, abs=1e-6)
    p, q = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])  # softmax (1/4, 3/4) vs (1/2, 1/2)
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert agreement(q, reference(p, "kl"), "kl") == pytest.approx(math.exp(-kl), abs=1e-6)
    hidden = torch.randn(2, 3, 4)
    for kind in ("top1", "cosine", "kl"):
        assert agreement(hidden, reference(hidden, kind), kind) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(rs.RanksearchError, match="the outputs have 6 rows where the dense model's have 4"):
        agreement(hidden, reference(dense, "top1"), "top1")


def test_distillation_losses_by_hand():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    t = 2.0
    by_hand = (F.softmax(teacher / t, 1) * (F.log_softmax(teacher / t, 1) - F.log_softmax(student / t, 1))).sum(1)
    torch.testing.assert_close(distillation_loss(student, teacher, "top1", t), t * t * by_hand.mean())
    torch.testing.assert_close(distillation_loss(student, teacher, "kl", t, weight=0.5), 0.5 * t * t * by_hand.mean())
    cosine = 1 - F.cosine_similarity(student, teacher, dim=1).mean()
    torch.testing.assert_close(distillation_loss(student, teacher, "cosine", t), cosine)
    assert distillation_loss(teacher, teacher, "cosine", t).abs().item() < 1e-6


# --- without labels through the evaluator -------------------------------------------------------------------


def test_an_embedding_model_without_labels_is_measured_by_fidelity(encoder_task):
    model, train_loader, val_loader = encoder_task
    evaluator = Evaluator(model, train_loader, val_loader, LABEL_FREE, objectives=("fidelity", "macs"))
    assert not evaluator.labels and evaluator.fidelity_kind == "cosine" and math.isnan(evaluator.dense.accuracy)
    full = evaluator.evaluate(rs.CompressionConfig({"up": ("svd", WIDTH), "down": ("svd", WIDTH)}))
    assert full.failure is None and full.fidelity == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(full.accuracy) and full.accuracy_finetuned is None and full.accuracy_recalibrated is None
    low = rs.CompressionConfig({"up": ("svd", 2), "down": ("svd", 2)})
    zero_shot = Evaluator(model, train_loader, val_loader, EvaluatorSettings(finetune_steps=0, eval_batches=2))
    before, after = zero_shot.evaluate(low), evaluator.evaluate(low)
    assert 0 < before.fidelity < 0.999 and before.finetune_skipped == "finetune_steps is 0"
    assert after.fidelity > before.fidelity and after.finetune_skipped is None  # distilled towards the dense model
    assert after.objective("fidelity") == after.fidelity
    with pytest.raises(rs.RanksearchError, match="the objective 'accuracy' was not measured: the batches carry no"):
        after.objective("accuracy")


def test_the_floor_without_labels_is_on_the_fidelity(encoder_task):
    model, train_loader, val_loader = encoder_task
    settings = EvaluatorSettings(finetune_steps=2, bn_batches=0, eval_batches=1, accuracy_floor=1.0)
    result = Evaluator(model, train_loader, val_loader, settings).evaluate(rs.CompressionConfig({"up": ("svd", 1)}))
    assert result.finetune_skipped.startswith("fidelity 0.") and "below the floor 1.0" in result.finetune_skipped


def test_accuracy_without_labels_is_a_clear_error(encoder_task):
    model, train_loader, val_loader = encoder_task
    with pytest.raises(rs.RanksearchError, match="the objective 'accuracy' needs labels, but the validation batches"):
        Evaluator(model, train_loader, val_loader, LABEL_FREE, objectives=("accuracy", "macs"))


def test_fidelity_of_a_labelled_classifier_when_the_study_asks(tiny_task):
    model, train_loader, val_loader = tiny_task
    settings = EvaluatorSettings(finetune_steps=2, bn_batches=1, eval_batches=1)
    asked = Evaluator(model, train_loader, val_loader, settings, objectives=("accuracy", "fidelity", "macs"))
    assert asked.fidelity_kind == "top1" and asked.measure_fidelity(asked.model) == 1.0
    dense = asked.evaluate(rs.CompressionConfig())
    assert 0.9 <= dense.fidelity <= 1.0 and dense.accuracy == dense.accuracy_finetuned  # fine-tuned: may move
    unasked = Evaluator(model, train_loader, val_loader, settings).evaluate(rs.CompressionConfig())
    assert unasked.fidelity is None and unasked.accuracy == dense.accuracy
    with pytest.raises(rs.RanksearchError, match="the objective 'fidelity' was not measured"):
        unasked.objective("fidelity")


def test_a_classifier_without_labels_distills_its_logits(tiny_task):
    model, train_loader, val_loader = tiny_task
    images = [x for x, _ in val_loader]  # lone tensors: no labels
    settings = EvaluatorSettings(finetune_steps=3, bn_batches=1, eval_batches=1, distill_temperature=2.0)
    evaluator = Evaluator(model, [x for x, _ in train_loader], images, settings)
    assert evaluator.fidelity_kind == "top1"
    student = rs.apply(model, rs.CompressionConfig({"3.0": ("svd", 2)}), cache=evaluator.cache)
    outputs = student(evaluator.train_batches[0][0])
    expected = distillation_loss(outputs, evaluator.teacher_logits()[0], "top1", 2.0)
    torch.testing.assert_close(evaluator._finetune_loss(outputs, None, 0), expected, rtol=0, atol=0)


def test_the_proxy_without_labels_is_distillation_and_fidelity(encoder_task):
    model, train_loader, val_loader = encoder_task
    screen = Screen(Evaluator(model, train_loader, val_loader, LABEL_FREE))
    assert screen.dense.loss == pytest.approx(0.0, abs=1e-6) and screen.dense.metric == pytest.approx(1.0, abs=1e-6)
    score = screen.score(rs.CompressionConfig({"up": ("svd", 1)}))
    assert 1e-4 < score.loss < 1 and 0 < score.metric < 0.9999


def test_finetune_epochs_without_labels_distills_the_teacher(encoder_task):
    model, train_loader, _ = encoder_task
    student = rs.apply(model, rs.CompressionConfig({"up": ("svd", 1), "down": ("svd", 1)}))
    losses = finetune_epochs(student, train_loader, epochs=3, lr=0.05, weight_decay=0.0, teacher=model, log=str)
    assert len(losses) == 3 and losses[-1] < losses[0]
    with pytest.raises(rs.RanksearchError, match=r"the training batches carry no labels: .* pass it as teacher="):
        finetune_epochs(student, train_loader, epochs=1, log=str)


def test_objectives_need_a_quality():
    assert check_objectives(("fidelity", "macs")) == ("fidelity", "macs")
    with pytest.raises(rs.RanksearchError, match="objectives must include 'accuracy' or 'fidelity'"):
        check_objectives(("macs", "params"))
    stored = Measurements.from_attrs({"accuracy": 0.5})  # a trial stored before fidelity existed
    assert stored.fidelity is None and Measurements.from_attrs(Measurements(fidelity=0.75).to_attrs()).fidelity == 0.75
