"""Calibration: the input vectors each layer multiplies, their streamed second moments, and bad inputs."""

from __future__ import annotations

import pytest
import torch
from _helpers import CONV_CASES, make_layer
from torch import nn

import ranksearch as rs
from ranksearch import calibration as calibration_module
from ranksearch.calibration import input_vectors

EXTRA_CONVS = {
    "conv1d-same-circular": nn.Conv1d(4, 6, 4, padding="same", padding_mode="circular", dtype=torch.float64),
    "conv1d-stride-dilated": nn.Conv1d(4, 6, 3, stride=2, dilation=2, padding=1, dtype=torch.float64),
    "grouped": nn.Conv2d(6, 9, 3, padding=1, groups=3, dtype=torch.float64),
    "depthwise-replicate": nn.Conv2d(4, 8, 3, padding=2, groups=4, padding_mode="replicate", dtype=torch.float64),
}


def conv_output_from_vectors(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``W x`` per output position from :func:`input_vectors`, as ``(rows, O)``."""
    groups = conv.groups
    weight = conv.weight.reshape(groups, conv.out_channels // groups, -1)
    rows = torch.cat(list(input_vectors(conv, x)))  # (rows, g, d)
    return torch.einsum("ngd,god->ngo", rows, weight).reshape(rows.shape[0], -1)


@pytest.mark.parametrize("case", [*CONV_CASES, *EXTRA_CONVS])
def test_input_vectors_are_exactly_what_the_conv_multiplies(case):
    if case in CONV_CASES:
        conv, x = make_layer(case)
    else:
        conv = EXTRA_CONVS[case]
        x = torch.randn(3, conv.in_channels, *((11,) if isinstance(conv, nn.Conv1d) else (9, 8)), dtype=torch.float64)
    with torch.no_grad():
        y = conv(x) - (0 if conv.bias is None else conv.bias.reshape(1, -1, *(1,) * (x.dim() - 2)))
    expected = y.reshape(y.shape[0], y.shape[1], -1).transpose(1, 2).reshape(-1, y.shape[1])
    torch.testing.assert_close(conv_output_from_vectors(conv, x), expected, rtol=0, atol=1e-10)


def test_chunked_vectors_equal_one_block(monkeypatch):
    conv, x = make_layer("3x3")
    whole = torch.cat(list(input_vectors(conv, x)))
    monkeypatch.setattr(calibration_module, "_CHUNK_ELEMENTS", 10)  # one sample per chunk
    chunks = list(input_vectors(conv, x))
    assert len(chunks) == x.shape[0]
    torch.testing.assert_close(torch.cat(chunks), whole, rtol=0, atol=0)


class Net(nn.Module):
    """A conv, a grouped conv and a Linear applied to a 3-D input (rows over two axes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.grouped = nn.Conv2d(6, 6, 3, stride=2, groups=2)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.grouped(torch.relu(self.conv(x)))  # (N, 6, 3, 3)
        return self.head(h.flatten(2).transpose(1, 2))  # (N, 9, 5)


def brute_force(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every layer's inputs kept, then ``X^T X / n`` per group in float64."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name in ("conv", "grouped", "head"):
        module = model.get_submodule(name)
        hooks.append(module.register_forward_pre_hook(lambda m, a, n=name: seen.setdefault(n, []).append(a[0])))
    with torch.no_grad():
        for x in batches:
            model(x)
    for hook in hooks:
        hook.remove()
    moments = {}
    for name, inputs in seen.items():
        module = model.get_submodule(name)
        rows = torch.cat([torch.cat(list(input_vectors(module, x))) for x in inputs]).double()
        moments[name] = torch.einsum("ngi,ngj->gij", rows, rows) / rows.shape[0]
    return moments


def test_streamed_second_moments_equal_the_kept_inputs_reference():
    model = Net().eval()
    batches = [torch.randn(4, 2, 7, 7) for _ in range(3)]
    calibration = rs.calibrate(model, [(x, None) for x in batches], batches=3)
    reference = brute_force(model, batches)
    assert set(calibration) == set(reference) == {"conv", "grouped", "head"}
    for name, moment in reference.items():  # float32 products per block, summed in float64
        torch.testing.assert_close(calibration[name].second_moment, moment, rtol=1e-5, atol=1e-7)
    assert calibration["grouped"].second_moment.shape == (2, 27, 27)
    assert calibration["head"].samples == 3 * 4 * 9 and calibration.batches == 3 and calibration.samples == 12


def test_a_memory_cap_splits_the_layers_into_passes_with_the_same_result():
    model = Net().eval()
    loader = [torch.randn(4, 2, 7, 7) for _ in range(2)]
    whole = rs.calibrate(model, loader, batches=2)
    split = rs.calibrate(model, loader, batches=2, max_bytes=8 * 27 * 27)  # one layer per pass
    assert whole.passes == 1 and split.passes == 3
    for name in whole:
        torch.testing.assert_close(split[name].second_moment, whole[name].second_moment, rtol=0, atol=0)


def test_attention_projections_are_calibrated_on_the_unpacked_view_once_per_input():
    model = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True, dropout=0.0).eval()
    x = torch.randn(3, 5, 8)
    calibration = rs.calibrate(model, [x], batches=1)
    names = {f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    assert names <= set(calibration)
    rows = x.reshape(-1, 8).double()
    torch.testing.assert_close(calibration["self_attn.q_proj"].second_moment[0], rows.T @ rows / 15)
    query = calibration["self_attn.q_proj"].second_moment
    for projection in ("k_proj", "v_proj"):  # self-attention: the same input, computed once, equal results
        assert torch.equal(calibration[f"self_attn.{projection}"].second_moment, query)


def test_save_and_load_round_trip(tmp_path):
    calibration = rs.calibrate(Net().eval(), [torch.randn(2, 2, 7, 7)], batches=1)
    loaded = rs.Calibration.load(calibration.save(tmp_path / "c" / "cal.pt"))
    assert list(loaded) == list(calibration) and loaded.data_digest == calibration.data_digest
    for name in calibration:
        assert torch.equal(loaded[name].second_moment, calibration[name].second_moment)
        assert loaded[name].digest == calibration[name].digest


def test_the_digest_follows_the_data_and_the_weights():
    model, x = Net().eval(), torch.randn(2, 2, 7, 7)
    first = rs.calibrate(model, [x], batches=1)
    assert rs.calibrate(model, [x.clone()], batches=1).data_digest == first.data_digest
    assert rs.calibrate(model, [x + 1], batches=1).data_digest != first.data_digest
    with torch.no_grad():
        model.head.weight.add_(1)
    assert rs.calibrate(model, [x], batches=1).data_digest != first.data_digest


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batches": 0}, "calibration batches must be a positive int, got 0"),
        ({"batches": True}, "calibration batches must be a positive int, got True"),
        ({"layers": ["nope"]}, "calibration: the model has no layer 'nope'"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(rs.RanksearchError, match=message):
        rs.calibrate(Net().eval(), [torch.randn(2, 2, 7, 7)], **kwargs)


def test_an_empty_loader_and_a_layer_never_called_are_errors(tmp_path):
    with pytest.raises(rs.RanksearchError, match="the calibration loader is empty"):
        rs.calibrate(Net().eval(), [], batches=1)

    class Unused(Net):
        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.Linear(4, 4)

    with pytest.raises(rs.RanksearchError, match=r"1 layer\(s\) never ran in the forward pass: spare"):
        rs.calibrate(Unused().eval(), [torch.randn(2, 2, 7, 7)], batches=1)
    (tmp_path / "x.pt").write_bytes(b"not a torch file")
    with pytest.raises(rs.RanksearchError, match=r"x.pt is not a ranksearch calibration file"):
        rs.Calibration.load(tmp_path / "x.pt")
    torch.save({"format": 99}, tmp_path / "y.pt")
    with pytest.raises(rs.RanksearchError, match=r"y.pt is not a ranksearch calibration file"):
        rs.Calibration.load(tmp_path / "y.pt")
    with pytest.raises(rs.RanksearchError, match="no calibration file at"):
        rs.Calibration.load(tmp_path / "missing.pt")
    calibration = rs.calibrate(Net().eval(), [torch.randn(2, 2, 7, 7)], batches=1)
    with pytest.raises(KeyError, match="no calibration statistics for layer 'other'"):
        calibration["other"]


class Tokens(nn.Module):
    """A Hugging Face-like model: called with a dict of inputs, a Linear over (batch, tokens, d)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * attention_mask[..., None]


def test_padding_positions_of_dict_batches_are_left_out():
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    calibration = rs.calibrate(Tokens(), [{"x": x, "attention_mask": mask}], batches=1)
    real = x[mask.bool()].double()  # (8, 4)
    assert calibration["proj"].samples == 8
    torch.testing.assert_close(calibration["proj"].second_moment[0], real.T @ real / 8)
