"""Which layers are compressible, and the reason for every layer that is not."""

from __future__ import annotations

from torch import nn

import ranksearch as rs
from ranksearch.attention import searchable_view
from ranksearch.decompositions import available_methods, get_method
from ranksearch.models import resnet20, small_cnn


class Zoo(nn.Module):
    """One of each kind of layer a user's model may hold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.pointwise = nn.Conv2d(16, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.transposed = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.conv1d = nn.Conv1d(4, 4, 3)
        self.head = nn.Linear(16, 10)
        self.tied_a = nn.Linear(10, 10)
        self.tied_b = nn.Linear(10, 10)
        self.tied_b.weight = self.tied_a.weight
        self.reused = nn.Linear(10, 10)
        self.blocks = nn.ModuleList([self.reused])
        self.attention = nn.MultiheadAttention(16, 2)
        self.lazy = nn.LazyLinear(4)


def test_zoo_reasons():
    model = Zoo()
    layers, skipped = rs.compressible_layers(model), rs.skipped_layers(model)
    assert set(layers) == {"conv", "pointwise", "grouped", "conv1d", "head"} | {
        f"attention.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")
    }
    for name, info in layers.items():  # every registered method is either offered or refused with its reason
        module = searchable_view(model).get_submodule(name)
        reasons = {m: get_method(m).unsupported_reason(module) for m in available_methods()}
        assert info.methods == tuple(m for m, reason in reasons.items() if reason is None)
        assert info.unsupported == {m: reason for m, reason in reasons.items() if reason is not None}
        assert info.max_ranks == {m: get_method(m).max_rank(module) for m in info.methods}
    # the built-in methods' answers for these layers
    assert "svd" in layers["pointwise"].methods and "tucker2" not in layers["pointwise"].methods
    assert layers["pointwise"].unsupported["cp"] == "1x1 kernel: nothing to factorize spatially (use svd)"
    assert {"svd", "tt"} <= set(layers["head"].methods) and "cp" not in layers["head"].methods
    builtin = {"cp": 1152 // 30, "svd": 16, "tt": (8, 24, 16), "tucker2": (16, 8), "tucker2_hooi": (16, 8)}
    assert {m: layers["conv"].max_ranks.get(m) for m in builtin} == builtin
    grouped_methods = set(layers["grouped"].methods)  # factorized per group: 4 in, 4 out channels each
    assert {"svd", "tucker2", "tucker2_hooi", "svd_whiten", "tucker2_whiten"} <= grouped_methods
    assert not {"cp", "tt", "cp_refit", "tt_refit"} & grouped_methods
    depthwise = (
        "grouped convolution (groups=16, 1 input channel(s) per group): even rank 1 per group holds as many "
        "weights as the dense kernel, nothing to gain"
    )
    grouped = "grouped convolution (groups=16) is not supported"
    per_group = {"svd", "tucker2", "tucker2_hooi", "svd_whiten", "tucker2_whiten"}  # they factorize per group
    assert skipped == {
        "depthwise": "; ".join(f"{m}: {depthwise if m in per_group else grouped}" for m in available_methods()),
        "transposed": "transposed convolution is not supported",
        "tied_a": "weight shared by several modules (tied_a.weight, tied_b.weight)",
        "tied_b": "weight shared by several modules (tied_a.weight, tied_b.weight)",
        "reused": "module registered under several names (reused, blocks.0)",
        "lazy": "lazy module with uninitialized parameters: run a forward pass first",
    }


def test_builtin_models_are_fully_compressible():
    layers = rs.compressible_layers(resnet20())
    assert len(layers) == 20 and not rs.skipped_layers(resnet20())  # 19 convs + fc
    assert layers["conv1"].max_ranks["tucker2"] == (16, 3)  # the 3-channel stem caps r_in at 3
    cnn = small_cnn(in_channels=1)
    assert cnn[0][0] is cnn.get_submodule("0.0")
    assert rs.compressible_layers(cnn)["0.0"].max_ranks["tucker2"] == (9, 1)  # 1 input channel, 3x3
