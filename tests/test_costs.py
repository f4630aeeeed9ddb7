"""count(): exact MACs and params of dense and compressed models, against independent counters."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import ranksearch as rs
from ranksearch.models import resnet20, small_cnn

MIXED = rs.CompressionConfig(
    {
        "conv1": ("svd", 8),
        "layers.0.0.conv1": ("tucker2", (8, 4)),
        "layers.1.0.conv1": ("cp", 12),
        "layers.2.0.conv2": ("tt", 16),
        "layers.2.1.conv1": ("svd", 20),
        "fc": ("tt", 2),
    }
)


def flop_counter_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(shape))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("compressed", [False, True])
def test_macs_equal_flop_counter_and_fvcore(compressed):
    from fvcore.nn import FlopCountAnalysis

    model = resnet20()
    if compressed:
        model = rs.apply(model, MIXED)
    shape = (2, 3, 32, 32)
    report = rs.count(model, shape)
    assert report.macs == flop_counter_macs(model, shape)
    analysis = FlopCountAnalysis(model.eval(), torch.zeros(shape))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    # fvcore also counts batch_norm and adaptive_avg_pool2d; we count conv/linear/matmul only
    by_operator = analysis.by_operator()
    assert {"batch_norm", "adaptive_avg_pool2d"} <= set(by_operator)
    assert report.macs == sum(v for k, v in by_operator.items() if k in ("conv", "linear", "addmm", "matmul"))
    assert report.params == sum(p.numel() for p in model.parameters())
    assert report.table["params"].sum() == report.params  # every parameter sits in exactly one row
    assert report.flops == 2 * report.macs


def test_table_rows_of_factorized_layers_match_their_method_cost():
    model = resnet20()
    small = rs.apply(model, MIXED)
    table = rs.count(small, (1, 3, 32, 32)).table.set_index("layer")
    for name, (method_name, _) in MIXED.items():
        row = table.loc[name]
        method = rs.get_method(method_name)
        layer = model.get_submodule(name)
        cost = method.cost(layer, row["rank"], row["input_shape"])
        assert (row["method"], row["type"], row["macs"], row["params"]) == (
            method_name,
            "FactorizedLayer",
            cost.macs,
            cost.params,
        )


def test_compare_reports_ratios_and_totals():
    model = resnet20()
    before, after = rs.count(model, (1, 3, 32, 32)), rs.count(rs.apply(model, MIXED), (1, 3, 32, 32))
    table = rs.compare(before, after).set_index("layer")
    assert list(table.index[:2]) == ["conv1", "layers.0.0.conv1"]  # model order, conv/linear rows only
    assert table.loc["layers.0.1.conv1", "macs_ratio"] == 1.0
    assert table.loc["TOTAL", "macs_after"] == after.macs and table.loc["TOTAL", "params_before"] == before.params
    assert table.loc["layers.2.0.conv2", "macs_ratio"] == pytest.approx(
        table.loc["layers.2.0.conv2", "macs_after"] / table.loc["layers.2.0.conv2", "macs_before"], abs=1e-4
    )


def test_train_mode_is_restored_and_counted_on_the_given_shape():
    model = small_cnn(in_channels=1).train()
    report = rs.count(model, (4, 1, 32, 32))
    assert all(m.training for m in model.modules())
    assert report.input_shape == (4, 1, 32, 32)
    assert report.macs == 4 * rs.count(model, (1, 1, 32, 32)).macs
    assert "MACs" in str(report) and "FLOPs" in str(report)


def test_forward_failure_names_the_shape():
    with pytest.raises(rs.RanksearchError, match=r"forward pass failed on an input of shape \(1, 3, 32, 32\)"):
        rs.count(small_cnn(in_channels=1), (1, 3, 32, 32))


class Conv1D(nn.Module):
    """A stand-in for Hugging Face's ``Conv1D`` (GPT-2's projections): a Linear with its weight stored (nx, nf)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)  # (B*T, nf)
        return rows.reshape(*x.shape[:-1], self.nf)


def test_hugging_face_conv1d_counts_as_the_linear_it_is():
    model = nn.Sequential(Conv1D(12, 8), nn.GELU(), Conv1D(8, 12))
    report = rs.count(model, (2, 5, 8))
    assert report.macs == 2 * 5 * 8 * 12 + 2 * 5 * 12 * 8 == flop_counter_macs(model, (2, 5, 8))
    assert list(report.table["macs"]) == [2 * 5 * 8 * 12, 2 * 5 * 12 * 8]
