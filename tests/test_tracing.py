"""trace_calls: one forward pass on zeros (or an example input), every call of the chosen modules with its shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ranksearch.errors import RanksearchError
from ranksearch.tracing import ModuleCall, is_shape, trace_calls


class Twice(nn.Module):
    """A conv called twice (the same weights on two feature maps), then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.shared = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shared(self.shared(self.norm(self.stem(x))))
        return self.head(x.flatten(1))


def seeded() -> Twice:
    torch.manual_seed(0)
    model = Twice()
    with torch.no_grad():
        model.norm.running_mean.normal_()
        model.norm.running_var.uniform_(0.5, 2.0)
    return model


def test_every_call_is_recorded_in_return_order_with_its_shapes():
    model = seeded()
    calls = trace_calls(model, (2, 3, 8, 8), ["shared", "stem", "head"])
    assert [(c.name, c.input_shape, c.output_shape) for c in calls] == [
        ("stem", (2, 3, 8, 8), (2, 4, 8, 8)),
        ("shared", (2, 4, 8, 8), (2, 4, 4, 4)),
        ("shared", (2, 4, 4, 4), (2, 4, 2, 2)),
        ("head", (2, 16), (2, 5)),
    ]
    assert calls[0] == ModuleCall("stem", model.stem, (2, 3, 8, 8), (2, 4, 8, 8))
    assert calls[1].module is model.shared


def test_the_model_runs_in_eval_mode_and_is_left_as_it_was():
    model = seeded().train()
    model.norm.eval()  # a mixed state is restored module by module
    stats = model.norm.running_mean.clone()
    weights = {name: t.clone() for name, t in model.state_dict().items()}
    seen: list[bool] = []
    model.stem.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    trace_calls(model, (1, 3, 8, 8), ["stem"])
    assert seen == [False]
    assert model.training and model.stem.training and not model.norm.training
    assert torch.equal(model.norm.running_mean, stats)  # eval mode: BatchNorm statistics untouched
    assert all(torch.equal(t, weights[name]) for name, t in model.state_dict().items())
    assert not model.stem._forward_hooks and not model.head._forward_hooks


def test_the_input_is_zeros_of_the_first_parameter_dtype_unless_given():
    model = seeded().double()
    inputs: list[torch.Tensor] = []
    model.stem.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    trace_calls(model, (1, 3, 8, 8), [])
    assert inputs[0].dtype == torch.float64 and not inputs[0].any()
    free = nn.Flatten()  # no parameters: float32 on the CPU, or the given dtype
    (call,) = trace_calls(free, [2, 3, 4], [""])  # any sequence of ints
    assert call.output_shape == (2, 12)
    free.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    trace_calls(free, (1, 2), [])
    trace_calls(free, (1, 2), [], dtype=torch.float16)
    assert [t.dtype for t in inputs[1:]] == [torch.float32, torch.float16]


def test_a_seeded_model_traces_to_the_same_output_as_its_forward():
    """The traced pass is the model's own forward on zeros: the head's output matches it exactly."""
    model = seeded()
    outputs: list[torch.Tensor] = []
    model.head.register_forward_hook(lambda module, args, output: outputs.append(output))
    trace_calls(model, (3, 3, 8, 8), ["head"])
    with torch.no_grad():
        expected = model.eval()(torch.zeros(3, 3, 8, 8))
    torch.testing.assert_close(outputs[0], expected, rtol=0, atol=0)
    assert outputs[0].shape == (3, 5)
    assert float(expected[0, 0]) == pytest.approx(float(expected[2, 0]))  # zeros: every sample the same


def test_non_tensor_outputs_have_empty_shapes_and_the_model_itself_is_named_empty():
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pair(x)[0]

    model = Model()
    pair, whole = trace_calls(model, (2, 3), ["pair", ""])
    assert (pair.name, pair.input_shape, pair.output_shape) == ("pair", (2, 3), ())
    assert (whole.name, whole.module, whole.output_shape) == ("", model, (2, 3))


def test_a_failing_forward_names_the_shape_and_cleans_up():
    model = seeded().train()
    with pytest.raises(RanksearchError, match=r"forward pass failed on an input of shape \(1, 5, 8, 8\)") as info:
        trace_calls(model, (1, 5, 8, 8), ["stem"])
    assert isinstance(info.value.__cause__, RuntimeError)
    assert model.training and not model.stem._forward_hooks


def test_shapes_and_example_inputs_are_told_apart():
    assert is_shape((1, 3)) and is_shape([2]) and is_shape(torch.Size([1, 2])) and is_shape(())
    assert not is_shape(torch.zeros(2)) and not is_shape((torch.zeros(2),)) and not is_shape({"x": torch.zeros(1)})


def test_an_example_input_is_used_as_it_is_with_keywords_or_positions():
    class Keywords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(7, 4), nn.Linear(4, 2)

        def forward(self, input_ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(input_ids) * scale[..., None])

    model = Keywords().double()
    seen: list[torch.Tensor] = []
    model.head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    ids, scale = torch.tensor([[1, 6, 3]]), torch.full((1, 3), 2.0)
    (call,) = trace_calls(model, {"input_ids": ids, "scale": scale}, ["head"], dtype=torch.float64)
    assert (call.input_shape, call.output_shape) == ((1, 3, 4), (1, 3, 2))
    torch.testing.assert_close(seen[0], model.embed(ids).detach() * 2.0, rtol=0, atol=0)  # the values, not zeros
    (call,) = trace_calls(nn.Bilinear(2, 3, 4), (torch.zeros(5, 2), torch.zeros(5, 3)), [""])
    assert call.output_shape == (5, 4)
    with pytest.raises(RanksearchError, match=r"forward pass failed on the example input \{'input_ids': \(1, 3\)\}"):
        trace_calls(model, {"input_ids": ids}, [])
