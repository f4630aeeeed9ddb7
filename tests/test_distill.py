"""The brief fine-tune's distillation by default: its weight (0.5 with the default cross-entropy, 0 with a
user's loss, as set otherwise) and its targets (kept between trials when small, else computed per step, with
the same fine-tune either way)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import ranksearch as rs
from ranksearch import _distill
from ranksearch.evaluator import Evaluator, EvaluatorSettings
from ranksearch.heuristics import uniform_config

FAST = {"finetune_steps": 3, "bn_batches": 1, "eval_batches": 1}


def evaluator_of(task, **kwargs) -> Evaluator:
    model, train_loader, val_loader = task
    settings = {key: kwargs.pop(key) for key in list(kwargs) if key != "loss_fn"}
    return Evaluator(model, train_loader, val_loader, EvaluatorSettings(**FAST, **settings), **kwargs)


def a_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, label_smoothing=0.1)


@pytest.mark.parametrize(
    ("kwargs", "weight"),
    [
        ({}, 0.5),  # the default cross-entropy: class scores, distilled at 0.5
        ({"loss_fn": a_loss}, 0.0),  # a user's loss: labels only unless asked
        ({"loss": "torch.nn.functional:nll_loss"}, 0.0),  # named in the settings: the user's too
        ({"loss": "torch.nn.functional:cross_entropy"}, 0.5),  # the default loss, named
        ({"distill": 0.0}, 0.0),
        ({"distill": 0.2, "loss_fn": a_loss}, 0.2),
        ({"distill": 1.0}, 1.0),
    ],
)
def test_the_distillation_weight_in_use(tiny_task, kwargs, weight):
    assert evaluator_of(tiny_task, **kwargs).distill == weight


def test_bad_distill_settings_are_refused():
    with pytest.raises(rs.RanksearchError, match=r"evaluator setting distill must be a number in \[0, 1\], got 1.5"):
        EvaluatorSettings(distill=1.5)
    assert EvaluatorSettings().distill is None


def test_teacher_outputs_too_big_to_keep_are_computed_per_step_with_the_same_fine_tune(tiny_task, monkeypatch):
    model = tiny_task[0]
    config = uniform_config(model, fraction=0.5, method="svd")
    kept = evaluator_of(tiny_task, distill=0.5)
    student = rs.apply(model, config, cache=kept.cache)
    other = copy.deepcopy(student)
    kept.finetune(student)
    assert kept.teacher.keep is True and len(kept.teacher._kept) == 3

    monkeypatch.setattr(_distill, "TEACHER_CACHE_BYTES", 0)
    recomputed = evaluator_of(tiny_task, distill=0.5)
    recomputed.finetune(other)
    assert recomputed.teacher.keep is False and not recomputed.teacher._kept
    for (name, a), b in zip(student.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert all(torch.equal(a, b) for a, b in zip(kept.teacher_logits(), recomputed.teacher_logits(), strict=True))
