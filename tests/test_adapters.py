"""BatchAdapter: batches and model outputs of real users' models (Hugging Face dicts, tuples, ModelOutputs)
through the evaluator, MAC counting, latency timing and the user's own functions named by strings.

Exact comparisons where the same operations run (the evaluator's accuracy against the same sum by hand,
MACs against their formula); latency only for being measured (positive, finite).
"""

from __future__ import annotations

import math
import sys
import uuid
from collections import OrderedDict, namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import ranksearch as rs
from ranksearch.adapters import (
    BatchAdapter,
    batch_size,
    call_model,
    describe,
    first_samples,
    leaf_tensors,
    repeat_first,
    to_device,
)
from ranksearch.evaluator import Evaluator, EvaluatorSettings
from ranksearch.latency import LatencyEstimator, LatencySettings, measure_seconds
from ranksearch.tracing import trace_calls
from ranksearch.usercode import importable

VOCAB, LENGTH, DIM, HIDDEN, CLASSES = 13, 6, 16, 24, 4
DENSE_MACS = DIM * HIDDEN + HIDDEN * CLASSES  # per sample: the two Linears after pooling (embedding: no MACs)
FAST = EvaluatorSettings(finetune_steps=5, bn_batches=1, eval_batches=2)
TIMING = LatencySettings(batch_size=3, warmup=0, repeats=1, min_sample_seconds=0.0)


class ModelOutput(OrderedDict):
    """A stand-in for transformers' ``ModelOutput``: a dict whose keys are also attributes; None fields dropped."""

    def __init__(self, **fields: object) -> None:
        super().__init__((key, value) for key, value in fields.items() if value is not None)

    def __getattr__(self, name: str) -> object:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class TextClassifier(nn.Module):
    """A Hugging Face-like classifier: ``forward(input_ids, attention_mask)`` -> ``ModelOutput(logits=...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.hidden = nn.Linear(DIM, HIDDEN)
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ModelOutput:
        mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, D)
        return ModelOutput(loss=None, logits=self.head(torch.relu(self.hidden(pooled))), pooled=pooled)


class TextData(Dataset):
    """Sequences whose tokens come from their class's three tokens, right-padded with 0 (mask 0)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, CLASSES, (n,), generator=g)
        self.ids = 1 + 3 * self.labels[:, None] + torch.randint(0, 3, (n, LENGTH), generator=g)  # (n, T)
        lengths = torch.randint(3, LENGTH + 1, (n,), generator=g)
        self.mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()  # (n, T)
        self.ids = self.ids * self.mask

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


@pytest.fixture(scope="module")
def text_task():
    """A trained TextClassifier and its dict loaders: (model, train, val)."""
    torch.manual_seed(0)
    train_loader = DataLoader(TextData(256, seed=1), batch_size=32, shuffle=True)
    val_loader = DataLoader(TextData(64, seed=2), batch_size=16)
    model = TextClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(6):
        for batch in train_loader:
            loss = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]).logits, batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), train_loader, val_loader


def accuracy_by_hand(model: nn.Module, batches) -> float:
    """The evaluator's metric written out: top-1 accuracy per batch, weighted by batch size."""
    total, seen = 0.0, 0
    with torch.no_grad():
        for inputs, targets in batches:
            logits = model(**inputs).logits.float()
            total += (logits.argmax(dim=1) == targets).float().mean().item() * len(targets)
            seen += len(targets)
    return total / seen


# --- the adapter on its own ---------------------------------------------------------------------------------


def test_batches_split_into_inputs_and_targets():
    x, y = torch.randn(4, 3), torch.arange(4)
    split = BatchAdapter().split
    assert split((x, y))[0] is x and split([x, y])[1] is y and split((x, y, "path"))[1] is y
    assert split((x,)) == (x, None) and split(x) == (x, None) and split([x])[1] is None
    inputs, targets = split({"input_ids": x, "attention_mask": x, "labels": y})
    assert list(inputs) == ["input_ids", "attention_mask"] and targets is y
    assert split({"pixel_values": x, "label": y})[1] is y and split({"input_ids": x}) == ({"input_ids": x}, None)
    assert BatchAdapter(batch=lambda b: (b["x"], b["y"])).split({"x": x, "y": y}) == (x, y)


@pytest.mark.parametrize(
    ("adapter", "batch", "message"),
    [
        (BatchAdapter(), "text", r"a batch must be a tensor, an \(inputs, targets\) tuple or a dict .*, got a str"),
        (BatchAdapter(), (), r"a batch must be .*got a tuple \[\]"),
        (BatchAdapter(), {"x": 1, "label": 2, "labels": 3}, r"holds both 'labels' and 'label': which are the targets"),
        (
            BatchAdapter(),
            {"labels": torch.zeros(2)},
            r"holds only its targets \('labels'\): no model inputs",
        ),
        (
            BatchAdapter(batch=lambda b: b),
            torch.zeros(2),
            r"batch function must return \(inputs, targets\), got a Te",
        ),
    ],
)
def test_bad_batches_are_clear_errors(adapter, batch, message):
    with pytest.raises(rs.RanksearchError, match=message):
        adapter.split(batch)


def test_outputs_become_the_tensor_the_metric_sees():
    logits, hidden = torch.randn(2, 3), torch.randn(2, 5, 4)
    tensor = BatchAdapter().tensor
    assert tensor(logits) is logits and tensor((logits, hidden)) is logits and tensor([(logits,), hidden]) is logits
    assert tensor(ModelOutput(loss=None, logits=logits, hidden_states=hidden)) is logits
    assert tensor(ModelOutput(last_hidden_state=hidden, pooler_output=logits)) is hidden
    assert tensor({"boxes": hidden, "scores": logits}) is hidden  # no logits: the first tensor
    assert tensor(namedtuple("Out", "logits")(logits)) is logits  # a ModelOutput-like object read by attribute
    assert BatchAdapter(output=lambda out: out["scores"]).tensor({"boxes": hidden, "scores": logits}) is logits


@pytest.mark.parametrize(
    ("adapter", "outputs", "message"),
    [
        (
            BatchAdapter(),
            {"boxes": [1, 2], "names": "a"},
            r"a dict with keys \['boxes', 'names'\] and no tensor",
        ),
        (BatchAdapter(), 3.5, r"the model returned a float: ranksearch reads a tensor, .* pass an output function"),
        (BatchAdapter(), (), r"the model returned a tuple \[\]"),
        (
            BatchAdapter(output=lambda out: out.tolist()),
            torch.zeros(2),
            r"must return a tensor, got a list",
        ),
    ],
)
def test_unreadable_outputs_are_clear_errors(adapter, outputs, message):
    with pytest.raises(rs.RanksearchError, match=message):
        adapter.tensor(outputs)


def test_structures_move_cut_and_describe():
    Pair = namedtuple("Pair", "a b")
    value = {"ids": torch.zeros(4, 3, dtype=torch.long), "pair": Pair(torch.ones(4), 7), "flag": torch.tensor(1.0)}
    moved = to_device(value, "cpu")
    assert isinstance(moved["pair"], Pair) and moved["pair"].b == 7 and len(leaf_tensors(value)) == 3
    assert batch_size(value) == 4 and describe(value) == {"ids": (4, 3), "pair": [(4,), "int"], "flag": ()}
    cut = first_samples(value, 1, 4)
    assert describe(cut) == {"ids": (1, 3), "pair": [(1,), "int"], "flag": ()}
    assert describe(repeat_first(cut, 5))["ids"] == (5, 3)
    with pytest.raises(rs.RanksearchError, match="the model inputs hold no tensor with a batch dimension"):
        batch_size({"flag": torch.tensor(1.0)})
    assert call_model(lambda a, b: a + b, (1, 2)) == 3 and call_model(lambda *, k: k, {"k": 4}) == 4


# --- end to end --------------------------------------------------------------------------------------------


def test_dict_batches_and_model_outputs_through_the_evaluator(text_task):
    model, train_loader, val_loader = text_task
    evaluator = Evaluator(model, train_loader, val_loader, FAST)
    assert evaluator.dense.input_shape == {"input_ids": (1, LENGTH), "attention_mask": (1, LENGTH)}
    assert evaluator.dense.macs == DENSE_MACS and evaluator.labels
    assert evaluator.dense.accuracy == pytest.approx(accuracy_by_hand(model, evaluator.val_batches), abs=1e-12)
    assert evaluator.dense.accuracy > 0.9
    config = rs.CompressionConfig({"hidden": ("svd", 2)})
    result = evaluator.evaluate(config)
    assert result.failure is None and result.finetune_skipped is None and "finetune" in result.seconds
    assert result.accuracy == result.accuracy_finetuned and 0 <= result.accuracy <= 1
    assert result.macs == DIM * 2 + 2 * HIDDEN + HIDDEN * CLASSES
    assert result.macs == rs.count(rs.apply(model, config), evaluator.example_input).macs
    assert result.fidelity is None  # not asked for: the batches have labels


def test_macs_of_dict_and_tuple_inputs():
    model = TextClassifier()
    example = {"input_ids": torch.zeros(3, LENGTH, dtype=torch.long), "attention_mask": torch.ones(3, LENGTH)}
    report = rs.count(model, example)
    assert report.macs == 3 * DENSE_MACS and report.input_shape == {"input_ids": (3, 6), "attention_mask": (3, 6)}
    per_layer = dict(zip(report.table["layer"], report.table["macs"], strict=True))
    assert per_layer == {"embed": 0, "hidden": 3 * DIM * HIDDEN, "head": 3 * HIDDEN * CLASSES}
    calls = trace_calls(model, example, ["hidden"], dtype=torch.float64)  # a float mask cast; ids kept
    assert [(c.name, c.input_shape) for c in calls] == [("hidden", (3, DIM))]
    pair = nn.Bilinear(4, 5, 2)  # called with two tensors
    assert rs.count(pair, (torch.zeros(2, 4), torch.zeros(2, 5))).input_shape == [(2, 4), (2, 5)]
    with pytest.raises(rs.RanksearchError, match=r"forward pass failed on the example input \{'input_ids': \(3, 6\)\}"):
        rs.count(model, {"input_ids": example["input_ids"]})


def test_tuple_outputs_measure_as_their_first_tensor(tiny_task):
    model, train_loader, val_loader = tiny_task

    class WithFeatures(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.inner(x), x.flatten(1)

    config = rs.CompressionConfig({"inner.3.0": ("svd", 3)})
    plain = Evaluator(model, train_loader, val_loader, FAST).evaluate(rs.CompressionConfig({"3.0": ("svd", 3)}))
    wrapped = Evaluator(WithFeatures(model), train_loader, val_loader, FAST).evaluate(config)
    assert wrapped.failure is None
    assert (wrapped.accuracy, wrapped.accuracy_zero_shot, wrapped.macs) == (
        plain.accuracy,
        plain.accuracy_zero_shot,
        plain.macs,
    )


USER_MODULE = """
import torch
import torch.nn.functional as F

LOSS_CALLS = []


def split(batch):
    return batch["x"], batch["y"]


def scores(outputs):
    return outputs["scores"]


def top2(outputs, targets):
    return (outputs.topk(2, dim=1).indices == targets[:, None]).any(dim=1).float().mean().item()


def loss(outputs, targets):
    LOSS_CALLS.append(len(targets))
    return F.cross_entropy(outputs, targets)
"""


class DictMLP(nn.Module):
    """Returns a dict whose first tensor is not the one to measure (the output function picks ``scores``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"aux": torch.zeros(len(x), 1), "scores": self.fc(x)}


def test_functions_named_by_strings_serve_the_evaluator(tmp_path):
    name = f"rs_user_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    x, y = torch.randn(40, 6), torch.randint(0, 5, (40,))
    loader = [{"x": x[i : i + 10], "y": y[i : i + 10]} for i in range(0, 40, 10)]
    settings = EvaluatorSettings(
        finetune_steps=3,
        bn_batches=0,
        metric=f"{name}:top2",
        loss=f"{name}:loss",
        batch=f"{name}:split",
        output=f"{name}:scores",
    )
    model = DictMLP()
    try:
        with importable(tmp_path):
            evaluator = Evaluator(model, loader, loader, settings)
        with torch.no_grad():
            expected = (model.fc(x).topk(2, dim=1).indices == y[:, None]).any(dim=1).float().mean().item()
        assert evaluator.dense.accuracy == pytest.approx(expected, abs=1e-7)  # equal batches: the mean of means
        assert evaluator.evaluate(rs.CompressionConfig({"fc": ("svd", 2)})).failure is None
        assert sys.modules[name].LOSS_CALLS == [10, 10, 10]
        given = Evaluator(model, loader, loader, settings, metric=lambda out, t: 0.25)  # a callable wins
        assert given.dense.accuracy == 0.25
    finally:
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"metric": "no_module_like_this_one:f"},
            r"evaluator setting metric: .*no module named 'no_module_like",
        ),
        ({"output": "math:nothing_here"}, r"evaluator setting output: .*'nothing_here'"),
        ({"loss": "math:pi"}, r"evaluator setting loss: 'math:pi' .*not (a )?callable"),
    ],
)
def test_functions_that_cannot_be_loaded_are_clear_errors(tiny_task, kwargs, message):
    model, train_loader, val_loader = tiny_task
    with pytest.raises(rs.RanksearchError, match=message):
        Evaluator(model, train_loader, val_loader, EvaluatorSettings(finetune_steps=1, bn_batches=1, **kwargs))


def test_latency_of_a_dict_input_model(text_task):
    model, train_loader, val_loader = text_task
    example = next(iter(val_loader))
    example = {"input_ids": example["input_ids"], "attention_mask": example["attention_mask"]}
    estimator = LatencyEstimator(model, example, TIMING)
    assert describe(estimator.input_shape) == {"input_ids": (3, LENGTH), "attention_mask": (3, LENGTH)}
    assert torch.equal(estimator.input_shape["input_ids"][2], example["input_ids"][0])  # the first sample, repeated
    assert estimator.layer_inputs == {"hidden": (3, DIM), "head": (3, HIDDEN)}
    assert 0 < estimator.dense_seconds < math.inf and 0 < measure_seconds(model, example, TIMING) < math.inf
    evaluator = Evaluator(model, train_loader, val_loader, FAST, latency=TIMING)
    result = evaluator.evaluate(rs.CompressionConfig({"hidden": ("svd", 2)}), measure_latency=True)
    assert result.failure is None and 0 < result.latency_seconds < math.inf
    assert 0 < result.latency_measured_seconds < math.inf and math.isfinite(result.latency_ratio)


def test_lone_tensor_batches_of_a_labelled_model_are_not_mistaken_for_labels(tiny_task):
    model, _, _ = tiny_task
    inputs = TensorDataset(torch.randn(16, 1, 8, 8))
    evaluator = Evaluator(model, DataLoader(inputs, batch_size=8), DataLoader(inputs, batch_size=8), FAST)
    assert not evaluator.labels and math.isnan(evaluator.dense.accuracy)
