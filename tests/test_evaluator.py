"""The evaluator: BatchNorm recalibration, brief fine-tune, early exit, failures, determinism, bad data."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ranksearch as rs
from ranksearch.evaluator import Evaluator, EvaluatorSettings

FAST = EvaluatorSettings(finetune_steps=4, bn_batches=2, eval_batches=2)
CONFIG = rs.CompressionConfig({"0.0": ("svd", 3), "3.0": ("tucker2", 2), "6.0": ("cp", 4), "10": ("tt", 4)})


def test_dense_and_compressed_trials_record_everything(tiny_task):
    model, train_loader, val_loader = tiny_task
    evaluator = Evaluator(model, train_loader, val_loader, FAST)
    assert evaluator.dense.accuracy > 0.5 and evaluator.dense.input_shape == (1, 1, 8, 8)
    dense = evaluator.evaluate(rs.CompressionConfig())
    assert (dense.macs_ratio, dense.params_ratio, dense.layer_errors) == (1.0, 1.0, {})
    assert dense.accuracy_zero_shot == pytest.approx(evaluator.dense.accuracy)
    result = evaluator.evaluate(CONFIG)
    assert result.failure is None and result.finetune_skipped is None
    assert result.accuracy == result.accuracy_finetuned
    assert result.accuracy_recalibrated is not None and 0 <= result.accuracy <= 1
    assert result.macs == rs.count(rs.apply(model, CONFIG), (1, 1, 8, 8)).macs
    assert result.macs_ratio == pytest.approx(result.macs / evaluator.dense.macs)
    assert set(result.layer_errors) == set(CONFIG) and all(0 < e < 1 for e in result.layer_errors.values())
    assert {"decompose", "cost", "recalibrate", "finetune", "evaluate", "total"} <= set(result.seconds)
    attrs = result.attributes()
    assert attrs["config"] == CONFIG.to_dict() and rs.CompressionConfig.from_dict(attrs["config"]) == CONFIG


def test_same_seed_gives_the_same_metrics(tiny_task):
    model, train_loader, val_loader = tiny_task
    first = Evaluator(model, train_loader, val_loader, FAST).evaluate(CONFIG)
    second = Evaluator(model, train_loader, val_loader, FAST).evaluate(CONFIG)
    assert (first.accuracy, first.accuracy_recalibrated, first.macs) == (
        second.accuracy,
        second.accuracy_recalibrated,
        second.macs,
    )


def test_trials_reuse_the_factor_cache(tiny_task):
    model, train_loader, val_loader = tiny_task
    evaluator = Evaluator(model, train_loader, val_loader, FAST)
    evaluator.evaluate(rs.CompressionConfig({"3.0": ("svd", 4)}))
    evaluator.evaluate(rs.CompressionConfig({"3.0": ("svd", 8)}))
    assert evaluator.cache.stats.misses == 1  # one SVD; the second rank (and the errors) are slices


def test_recalibration_sets_running_stats_to_the_data_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.LazyLinear(2))
    x, y = torch.randn(48, 2, 6, 6) * 3 + 1, torch.randint(0, 2, (48,))
    model(x[:2])
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    evaluator = Evaluator(model, loader, loader, EvaluatorSettings(finetune_steps=0, bn_batches=3))
    copy = evaluator.model
    assert evaluator.recalibrate(copy)
    with torch.no_grad():
        features = copy[0](x)  # (48, 3, 4, 4)
    expected_mean = features.mean(dim=(0, 2, 3))  # equal batches: mean of batch means is the mean
    torch.testing.assert_close(copy[1].running_mean, expected_mean, rtol=1e-5, atol=1e-5)
    assert copy[1].momentum == 0.1 and not copy.training


def test_early_exit_skips_the_finetune_and_says_why(tiny_task):
    model, train_loader, val_loader = tiny_task
    settings = EvaluatorSettings(finetune_steps=4, bn_batches=2, eval_batches=2, accuracy_floor=1.0)
    result = Evaluator(model, train_loader, val_loader, settings).evaluate(CONFIG)
    assert result.accuracy_finetuned is None and "finetune" not in result.seconds
    assert result.finetune_skipped.startswith("accuracy ") and "below the floor 1.0" in result.finetune_skipped
    assert result.accuracy == result.accuracy_recalibrated


def test_nan_loss_is_a_recorded_failure(tiny_task):
    model, train_loader, val_loader = tiny_task
    evaluator = Evaluator(model, train_loader, val_loader, FAST, loss_fn=lambda logits, _: logits.sum() * float("nan"))
    result = evaluator.evaluate(CONFIG)
    assert result.failure == "FloatingPointError: fine-tune loss became nan at step 0"


def test_bad_configs_raise_instead_of_failing_the_trial(tiny_task):
    model, train_loader, val_loader = tiny_task
    with pytest.raises(rs.ConfigError, match="unknown layer 'conv9'"):
        Evaluator(model, train_loader, val_loader, FAST).evaluate(rs.CompressionConfig({"conv9": ("svd", 2)}))


def _loader(x, y, batch_size=8):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: (_loader(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)), None),
            "the training loader is empty",
        ),
        (
            lambda: (_loader(torch.zeros(8, 3, 8, 8), torch.zeros(8, dtype=torch.long)), None),
            r"forward pass fails on a validation batch of shape \(8, 3, 8, 8\)",
        ),
        (
            lambda: (_loader(torch.zeros(8, 1, 8, 8), torch.full((8,), 12)), None),
            r"labels must be integer class indices in \[0, 10\) for a model with 10 outputs, got values in \[12, 12\]",
        ),
        (
            lambda: (_loader(torch.full((8, 1, 8, 8), float("nan")), torch.zeros(8, dtype=torch.long)), None),
            "data contains NaN or infinite values",
        ),
        (
            lambda: (["not a batch"], None),
            r"the validation loader: a batch must be a tensor, an \(inputs, targets\) tuple or a dict .*, got a str",
        ),
        (
            lambda: ([(torch.zeros(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)), torch.zeros(8, 1, 8, 8)], None),
            "the validation loader yields batches with labels and batches without: give all or none",
        ),
        (
            lambda: ([(torch.zeros(8, 1, 8, 8), torch.zeros(7, dtype=torch.long))], None),
            r"inputs of shape \(8, 1, 8, 8\) with targets of shape \(7,\): they must have the same non-zero batch",
        ),
    ],
)
def test_bad_data_gets_a_clear_message(tiny_task, make, message):
    model, good_train, _ = tiny_task
    loader, _ = make()
    with pytest.raises(rs.RanksearchError, match=message):
        Evaluator(model, loader if "training" in message else good_train, loader, FAST)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"finetune_steps": -1}, "finetune_steps must be an int >= 0, got -1"),
        ({"eval_batches": 0}, "eval_batches must be an int >= 1 or None, got 0"),
        ({"threads": 0}, "threads must be an int >= 1 or None, got 0"),
        ({"lr": float("nan")}, "lr must be a finite number >= 0"),
        ({"accuracy_floor": 2}, r"accuracy_floor must be a number in \[0, 1\], got 2"),
        ({"device": "tpu9"}, "device 'tpu9' is not a torch device"),
        ({"fidelity": "top5"}, r"fidelity must be one of auto, top1, cosine, kl, got 'top5'"),
        (
            {"metric": "accuracy"},
            r"setting metric must be a string 'package.module:function', got 'accuracy'",
        ),
        ({"loss": len}, r"evaluator setting loss names .* pass the callable itself to Evaluator\(loss_fn=\.\.\.\)"),
        ({"batch": 3}, r"evaluator setting batch must be a string 'package.module:function', got 3"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(rs.RanksearchError, match=message):
        EvaluatorSettings(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(rs.RanksearchError, match="device 'cuda' requested but CUDA is not available"):
        EvaluatorSettings(device="cuda")


def test_evaluator_does_not_import_optuna():
    code = "import sys, ranksearch.evaluator, ranksearch.space, ranksearch.studyfile; print('optuna' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), True, "1"])
def test_a_bad_grad_clip_is_named(value):
    with pytest.raises(rs.RanksearchError, match="evaluator setting grad_clip must be a finite number > 0 or None"):
        EvaluatorSettings(grad_clip=value)


def test_grad_clip_bounds_each_fine_tune_step(tiny_task):
    """With lr 1, no momentum and no weight decay, one step moves the parameters by the clipped gradient:
    its norm is at most ``grad_clip``; without clipping it is the full (larger) gradient."""
    model, train_loader, val_loader = tiny_task
    config = rs.CompressionConfig({})
    moved = {}
    for clip in (None, 1e-3):
        settings = EvaluatorSettings(
            finetune_steps=1, lr=1.0, momentum=0.0, weight_decay=0.0, bn_batches=0, eval_batches=1, grad_clip=clip
        )
        evaluator = Evaluator(model, train_loader, val_loader, settings)
        small = evaluator.compress(config.resolve(evaluator.model))
        before = torch.cat([p.detach().flatten().clone() for p in small.parameters()])
        evaluator.finetune(small)
        after = torch.cat([p.detach().flatten() for p in small.parameters()])
        moved[clip] = float((after - before).norm())
    assert moved[1e-3] <= 1e-3 * (1 + 1e-4) < moved[None]
