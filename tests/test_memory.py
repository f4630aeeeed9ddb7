"""ranksearch.memory: weight bytes, the traced activation peak (exact on small models, checked against the
profiler's allocation records), memory_use's copies and inputs, and its errors."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import nn

from ranksearch.errors import RanksearchError
from ranksearch.memory import (
    MemoryUse,
    cuda_activation_peak,
    measured_cpu_activation_peak,
    memory_use,
    traced_activation_peak,
    weight_bytes,
)

B = 8  # the batch of the MLP tests


def mlp(inplace: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Linear(100, 200), nn.ReLU(inplace=inplace), nn.Linear(200, 50)).eval()


def conv_bn_relu_x2(kernel_size: int, channels: int = 16) -> nn.Sequential:
    padding = kernel_size // 2
    return nn.Sequential(
        nn.Conv2d(3, channels, kernel_size, padding=padding),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, kernel_size, padding=padding),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
    ).eval()


class Tokens(nn.Module):
    """Token ids -> embeddings -> logits, called as ``model(input_ids=...)``; records the ids' dtypes."""

    seen: ClassVar[list[torch.dtype]] = []  # shared by the copies memory_use makes

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        Tokens.seen.append(input_ids.dtype)
        return self.head(self.embed(input_ids))


class Gate(nn.Module):
    """Two inputs, called as ``model(x, gate)``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * gate


class Reshape(nn.Module):
    """Flattens the input (a view when it is contiguous, a copy otherwise) and a transposed weight (a view)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(30, 40))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(), self.weight.t()


# --- weight bytes ------------------------------------------------------------------------------------


def test_weight_bytes_per_dtype_keeps_integer_buffers():
    model = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20))
    # floats: Linear 10*20 + 20, BatchNorm weight, bias, running_mean, running_var 4*20 = 300;
    # num_batches_tracked: one int64 = 8 bytes at any deployment dtype
    assert weight_bytes(model) == 300 * 4 + 8 == 1208
    assert weight_bytes(model, torch.float32) == 1208
    assert weight_bytes(model, torch.bfloat16) == 300 * 2 + 8 == 608
    assert weight_bytes(model.to(torch.float16)) == 608
    assert memory_use(model, torch.randn(4, 10), dtype=torch.bfloat16).weights_bytes == 608


def test_weight_bytes_counts_tied_weights_once():
    embed, head = nn.Embedding(50, 8), nn.Linear(8, 50, bias=False)
    head.weight = embed.weight  # the same Parameter twice
    assert weight_bytes(nn.ModuleList([embed, head])) == 50 * 8 * 4
    other = nn.Linear(8, 50, bias=False)
    other.weight = nn.Parameter(embed.weight.data)  # another Parameter on the same storage
    assert weight_bytes(nn.ModuleList([embed, other])) == 50 * 8 * 4
    assert weight_bytes(nn.ModuleList([embed, nn.Linear(8, 50, bias=False)])) == 2 * 50 * 8 * 4


# --- the traced peak ---------------------------------------------------------------------------------


def test_traced_peak_of_an_mlp_is_exact():
    # Linear1 makes out1 (B*200 floats; its transposed weight is a view of the weight: nothing); ReLU makes
    # its output while out1 is still held: 2*B*200*4 = 12800 bytes, the peak. Sequential then drops out1,
    # and Linear2's output (B*50*4) joins ReLU's: B*200*4 + B*50*4 = 8000. Were frees not seen, the peak
    # would be 6400 + 6400 + 1600 = 14400.
    x = torch.randn(B, 100)
    assert traced_activation_peak(mlp(), x) == 2 * B * 200 * 4 == 12800
    use = memory_use(mlp(), x)
    assert use == MemoryUse(weight_bytes(mlp()), 12800, "traced")
    assert use.total_bytes == (100 * 200 + 200 + 200 * 50 + 50) * 4 + 12800


def test_traced_peak_of_an_mlp_with_an_inplace_relu():
    # relu_ writes into out1 (its output is out1's storage: nothing new): out1 (B*200*4) then the last
    # output (B*50*4) alongside it: 6400 + 1600 = 8000 bytes
    assert traced_activation_peak(mlp(inplace=True), torch.randn(B, 100)) == B * 200 * 4 + B * 50 * 4 == 8000


def test_views_of_inputs_and_weights_add_nothing():
    x = torch.randn(B, 100)
    assert traced_activation_peak(nn.Identity(), x) == 0
    assert traced_activation_peak(Reshape(), x) == 0
    assert traced_activation_peak(Reshape(), x[:, :50]) == B * 50 * 4  # a strided slice: flatten copies it


def test_tuple_inputs():
    # linear(x) (5*4 floats) is alive when the product (5*4 floats) is made: 2 * 80 bytes
    x, gate = torch.randn(5, 3), torch.rand(5, 4)
    assert traced_activation_peak(Gate(), (x, gate)) == 2 * 5 * 4 * 4
    assert memory_use(Gate(), (x, gate)).activations_bytes == 160


def test_dict_inputs_keep_integer_ids():
    Tokens.seen.clear()
    model = Tokens()
    ids = torch.randint(0, 50, (2, 7))
    use = memory_use(model, {"input_ids": ids})
    # weights: 50*16 + 16*10 + 10 floats; the embeddings (2*7*16) are alive when the logits (2*7*10) are made
    assert use == MemoryUse((800 + 160 + 10) * 4, (2 * 7 * 16 + 2 * 7 * 10) * 4, "traced")
    half = memory_use(model, {"input_ids": ids}, dtype=torch.bfloat16)
    assert half == MemoryUse((800 + 160 + 10) * 2, (2 * 7 * 16 + 2 * 7 * 10) * 2, "traced")
    assert Tokens.seen == [torch.int64, torch.int64]
    # the original is not touched
    assert model.training and {p.dtype for p in model.parameters()} == {torch.float32}


def test_memory_use_copies_the_model_in_eval_mode():
    model = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20), nn.Dropout(0.5))
    before = {name: t.clone() for name, t in model.state_dict().items()}
    x = torch.randn(4, 10)
    # in eval mode BatchNorm makes one output, Dropout none: the Linear's and the BatchNorm's 4*20 floats
    assert memory_use(model, x).activations_bytes == 2 * 4 * 20 * 4
    assert model.training
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())  # running stats kept


# --- against the profiler's allocation records -------------------------------------------------------


def test_traced_peak_matches_the_allocator_on_pointwise_convs():
    # Conv2d(1x1)-BN-ReLU x2, batch 4, 16x16, 16 channels: each activation is 4*16*16*16*4 = 65536 bytes and
    # two are alive at the peak (a conv's input and output, a BN's, a ReLU's). The profiler sees every CPU
    # allocation: oneDNN's 1x1 convolutions need no workspace here, so the two agree but for BatchNorm's
    # per-channel statistics made and freed inside its kernel (2*16*4 bytes). 15% leaves room for the
    # scratch another CPU's kernels may allocate; the traced estimate can never exceed the measurement.
    model, x = conv_bn_relu_x2(kernel_size=1), torch.randn(4, 3, 16, 16)
    traced, measured = traced_activation_peak(model, x), measured_cpu_activation_peak(model, x)
    assert traced == 2 * 4 * 16 * 16 * 16 * 4 == 131072
    assert traced <= measured <= 1.15 * traced


def test_traced_peak_leaves_out_kernel_workspace_on_3x3_convs():
    # The same model with 3x3 kernels: the trace still sees 2 activations (131072 bytes), but oneDNN's
    # convolution allocates and frees inside the op a blocked-layout copy of its output (one more
    # activation, 65536) and reordered weights (16*16*9*4 = 9216): the allocator peaks at 205824 bytes on an
    # AVX2 CPU (torch 2.13), 1.57 times the trace. That workspace is the kernel's and depends on the CPU and
    # the oneDNN build, so only its order is checked: the allocator sees all the trace sees, and less than
    # twice as much.
    model, x = conv_bn_relu_x2(kernel_size=3), torch.randn(4, 3, 16, 16)
    traced, measured = traced_activation_peak(model, x), measured_cpu_activation_peak(model, x)
    assert traced == 131072
    assert traced <= measured <= 2 * traced


def test_measured_peak_of_an_mlp_is_the_traced_one():
    # addmm and relu allocate nothing but their outputs: the allocator's records give the same 12800 bytes
    x = torch.randn(B, 100)
    assert measured_cpu_activation_peak(mlp(), x) == traced_activation_peak(mlp(), x) == 12800
    assert measured_cpu_activation_peak(mlp(inplace=True), x) == 8000


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "match"),
    [("nonsense", "'nonsense' is not a torch device"), ("meta", "'meta': only cpu and cuda are supported")],
)
def test_memory_use_rejects_devices(device, match):
    with pytest.raises(RanksearchError, match=match):
        memory_use(mlp(), torch.randn(B, 100), device=device)


def test_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RanksearchError, match="'cuda:0' requested but CUDA is not available"):
        memory_use(mlp(), torch.randn(B, 100), device="cuda:0")
    with pytest.raises(RanksearchError, match="needs CUDA, which is not available"):
        cuda_activation_peak(mlp(), torch.randn(B, 100))


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, "bfloat16"])
def test_non_floating_dtypes(dtype):
    with pytest.raises(RanksearchError, match="is not a floating-point torch dtype"):
        memory_use(mlp(), torch.randn(B, 100), dtype=dtype)
    with pytest.raises(RanksearchError, match="is not a floating-point torch dtype"):
        weight_bytes(mlp(), dtype)


@pytest.mark.parametrize("function", [memory_use, traced_activation_peak, measured_cpu_activation_peak])
@pytest.mark.parametrize(("inputs", "kind"), [([torch.randn(B, 100)], "list"), ("x", "str"), (None, "NoneType")])
def test_unsupported_inputs(function, inputs, kind):
    with pytest.raises(RanksearchError, match=f"must be a tensor, tuple or dict, not a {kind}$"):
        function(mlp(), inputs)


@pytest.mark.parametrize("function", [memory_use, traced_activation_peak, measured_cpu_activation_peak])
def test_a_failing_forward_names_the_model_and_the_error(function):
    with pytest.raises(RanksearchError, match="forward pass of Sequential failed: RuntimeError: mat1 and mat2") as info:
        function(mlp(), torch.randn(B, 7))
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(RanksearchError, match=r"forward pass of Tokens failed: TypeError: .*unexpected keyword"):
        function(Tokens(), {"ids": torch.zeros(2, 3, dtype=torch.long)})


# --- CUDA --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_agrees_with_the_traced_estimate():
    # the caching allocator rounds each block up to 512 bytes (6400 -> 6656: the MLP peaks at 13312 there);
    # 25% leaves room for that and for kernel workspace, which the allocator counts and the trace does not
    x = torch.randn(B, 100)
    cuda, cpu = memory_use(mlp(), x, device="cuda"), memory_use(mlp(), x)
    assert (cuda.method, cpu.method) == ("cuda allocator", "traced")
    assert cuda.weights_bytes == cpu.weights_bytes
    assert cuda.activations_bytes == pytest.approx(cpu.activations_bytes, rel=0.25)


def test_a_model_already_in_place_is_measured_as_it_is_and_keeps_its_modes():
    model = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20), nn.Dropout(0.5), nn.Linear(20, 5))
    model.train()
    model[2].eval()  # mixed modes: each one comes back
    before = [p.detach().clone() for p in model.parameters()]
    use = memory_use(model, torch.ones(8, 10))
    assert [m.training for m in model] == [True, True, False, True]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert model[1].running_mean.abs().sum() == 0  # ran in eval mode: no BatchNorm statistics updated
    copied = memory_use(model.double(), torch.ones(8, 10))  # float64 to float32: measured on a copy
    assert use == copied and next(model.parameters()).dtype == torch.float64
