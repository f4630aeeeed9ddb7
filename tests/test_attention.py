"""Attention blocks made compressible: nn.MultiheadAttention unpacked into ordinary Linear projections,
the encoder fast path kept off around factorized layers, and transformer models end to end.

Tolerances (float32): the unpacked attention matches nn.MultiheadAttention within 1e-5 absolute (its
projections are the same weights, computed as three matmuls instead of one); a model compressed at full
rank matches the dense one within 1e-4 absolute.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import ranksearch as rs
from ranksearch.attention import (
    UnpackedMultiheadAttention,
    searchable_view,
    unpack_attention,
    unpack_blockers,
    unpack_in_place,
)
from ranksearch.decompositions import FactorizedLayer

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def attention_inputs(batch_first: bool, kdim: int = 16, vdim: int = 16, unbatched: bool = False):
    query, key, value = torch.randn(5, 3, 16), torch.randn(7, 3, kdim), torch.randn(7, 3, vdim)
    if unbatched:
        return query[:, 0], key[:, 0], value[:, 0]
    if batch_first:
        return query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    return query, key, value


def masks(kind: str, unbatched: bool = False) -> dict:
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 4:] = True
    causal = torch.triu(torch.ones(5, 7, dtype=torch.bool), 1)
    per_head = torch.randn(3 * 4, 5, 7)
    options = {
        "none": {},
        "padding": {"key_padding_mask": padding[0] if unbatched else padding},
        "float-padding": {"key_padding_mask": padding.float() * -1e4},
        "causal": {"attn_mask": causal},
        "both": {"attn_mask": causal, "key_padding_mask": padding},
        "per-head-float": {"attn_mask": per_head, "average_attn_weights": False},
    }
    return options[kind]


def compare(mha: nn.MultiheadAttention, inputs, **kwargs) -> None:
    """Eval (no grad: torch's fused path where it applies) and training with dropout under one seed."""
    unpacked = UnpackedMultiheadAttention.from_mha(copy.deepcopy(mha))
    for training in (False, True):
        mha.train(training), unpacked.train(training)
        for need_weights in (True, False):
            with torch.set_grad_enabled(training):
                torch.manual_seed(3)
                expected = mha(*inputs, need_weights=need_weights, **kwargs)
                torch.manual_seed(3)
                actual = unpacked(*inputs, need_weights=need_weights, **kwargs)
            torch.testing.assert_close(actual[0], expected[0], rtol=0, atol=1e-5)
            assert (actual[1] is None) == (expected[1] is None)
            if expected[1] is not None:
                torch.testing.assert_close(actual[1], expected[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mask", ["none", "padding", "float-padding", "causal", "both", "per-head-float"])
def test_unpacked_attention_equals_multihead_attention(batch_first, mask):
    mha = nn.MultiheadAttention(16, 4, dropout=0.2, batch_first=batch_first)
    compare(mha, attention_inputs(batch_first), **masks(mask))


@pytest.mark.parametrize(
    "options",
    [
        {"kdim": 6, "vdim": 10},
        {"kdim": 6, "vdim": 10, "add_bias_kv": True, "add_zero_attn": True},
        {"bias": False},
    ],
)
def test_unpacked_attention_equals_multihead_attention_in_every_form(options):
    mha = nn.MultiheadAttention(16, 4, dropout=0.2, **options)
    inputs = attention_inputs(False, options.get("kdim", 16), options.get("vdim", 16))
    compare(mha, inputs, **masks("both"))
    compare(mha, attention_inputs(False, options.get("kdim", 16), options.get("vdim", 16), unbatched=True))


def test_self_attention_with_the_causal_hint_and_no_weights():
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    compare(mha, (x, x, x), attn_mask=causal, is_causal=True)


def test_unpacking_keeps_parameters_ties_and_the_user_model():
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 4, kdim=6, vdim=6), "head": nn.Linear(16, 16)})
    model["head"].weight = model["attn"].out_proj.weight  # tied: must stay tied
    before = copy.deepcopy(model.state_dict())
    unpacked = unpack_attention(model)
    assert isinstance(model["attn"], nn.MultiheadAttention) and model.state_dict().keys() == before.keys()
    assert isinstance(unpacked["attn"], UnpackedMultiheadAttention)
    assert unpacked["attn"].out_proj.weight is unpacked["head"].weight
    count = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in unpacked.parameters()) == count
    keys = set(unpacked.state_dict())
    assert {f"attn.{p}.weight" for p in PROJECTIONS} <= keys and "attn.q_proj_weight" not in keys
    assert rs.skipped_layers(model)["attn.out_proj"].startswith("weight shared by several modules")
    with pytest.raises(rs.UnsupportedLayerError, match=r"layer 'head' cannot be compressed: weight shared"):
        rs.apply(model, rs.CompressionConfig({"head": ("svd", 4)}))


class TiedLM(nn.Module):
    """A language model whose decoder shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 16)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 1)
        self.decoder = nn.Linear(16, 10)
        self.decoder.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(self.embedding(tokens)))


def test_tied_embedding_and_decoder_are_never_untied():
    model = TiedLM()
    assert rs.skipped_layers(model)["decoder"] == "weight shared by several modules (embedding.weight, decoder.weight)"
    with pytest.raises(rs.UnsupportedLayerError, match="layer 'decoder' cannot be compressed: weight shared"):
        rs.apply(model, rs.CompressionConfig({"decoder": ("svd", 4)}))
    compressed = rs.apply(model, every_layer(model, 0.5))
    assert compressed.decoder.weight is compressed.embedding.weight
    assert compressed(torch.randint(0, 10, (2, 5))).shape == (2, 5, 10)


def test_attention_registered_under_two_names_stays_one_module():
    shared = nn.MultiheadAttention(16, 4)
    model = nn.ModuleDict({"a": shared, "b": shared})
    unpacked = unpack_attention(model)
    assert isinstance(unpacked["a"], UnpackedMultiheadAttention) and unpacked["a"] is unpacked["b"]
    skipped = rs.skipped_layers(model)
    assert skipped["a.q_proj"] == "module registered under several names (a.q_proj, b.q_proj)"
    assert not rs.compressible_layers(model)


def test_projections_are_listed_and_compressed_by_name():
    model = nn.ModuleDict({"first": nn.MultiheadAttention(16, 4), "second": nn.MultiheadAttention(16, 4)}).eval()
    layers = rs.compressible_layers(model)
    assert list(layers) == [f"{m}.{p}" for m in ("first", "second") for p in PROJECTIONS]
    assert all(info.kind == "Linear" and info.weight_shape == (16, 16) for info in layers.values())
    config = rs.CompressionConfig({f"first.{p}": ("svd", 16) for p in PROJECTIONS})
    compressed = rs.apply(model, config)
    assert isinstance(compressed["first"], UnpackedMultiheadAttention)
    assert isinstance(compressed["second"], nn.MultiheadAttention)  # untouched: left packed
    assert all(isinstance(getattr(compressed["first"], p), FactorizedLayer) for p in PROJECTIONS)
    x = torch.randn(5, 2, 16)
    with torch.no_grad():
        torch.testing.assert_close(compressed["first"](x, x, x)[0], model["first"](x, x, x)[0], rtol=0, atol=1e-5)
    assert isinstance(model["first"], nn.MultiheadAttention)  # the user's model is untouched
    low = rs.apply(model, rs.CompressionConfig({"second.v_proj": ("svd", 2)}))
    assert low["second"].v_proj.rank == 2 and low["second"].v_proj.weight.shape == (16, 16)


def test_the_view_shares_weights_and_is_the_model_without_attention():
    model = nn.Sequential(nn.Linear(16, 16))
    assert searchable_view(model) is model
    attention = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 4)})
    view = searchable_view(attention)
    assert view.attn.out_proj.weight is attention.attn.out_proj.weight
    assert view.attn.q_proj.weight.data_ptr() == attention.attn.in_proj_weight.data_ptr()  # a view, not a copy


class SharedPacked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4)
        self.other = nn.Module()
        self.other.packed = self.attn.in_proj_weight


class MyAttention(nn.MultiheadAttention):
    pass


def test_attention_that_cannot_be_unpacked_is_skipped_with_the_reason():
    hooked = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 4)})
    hooked["attn"].register_forward_hook(lambda module, args, output: None)
    cases = {
        "its packed in_proj_weight is shared with other: unpacking would untie it": SharedPacked(),
        "MyAttention subclasses nn.MultiheadAttention: its forward may differ": nn.ModuleDict(
            {"attn": MyAttention(16, 4)}
        ),
        "it has forward hooks, which an unpacked module would not run": hooked,
    }
    for reason, model in cases.items():
        assert unpack_blockers(model) == {"attn": reason}
        skipped = rs.skipped_layers(model)
        message = f"projection of nn.MultiheadAttention 'attn', which cannot be unpacked: {reason}"
        assert {f"attn.{p}": message for p in PROJECTIONS}.items() <= skipped.items()
        assert not rs.compressible_layers(model)
        with pytest.raises(rs.UnsupportedLayerError, match=r"layer 'attn\.q_proj' cannot be compressed: projection"):
            rs.apply(model, rs.CompressionConfig({"attn.q_proj": ("svd", 2)}))
        with pytest.raises(rs.RanksearchError, match=f"attention 'attn' cannot be unpacked: {re.escape(reason)}"):
            unpack_in_place(copy.deepcopy(model), ["attn"])
    root = nn.MultiheadAttention(16, 4)
    assert unpack_blockers(root) == {"": "it is the model itself (use UnpackedMultiheadAttention.from_mha)"}
    assert isinstance(unpack_attention(root), UnpackedMultiheadAttention)


def test_bad_attention_inputs_are_refused_with_a_clear_message():
    attn = UnpackedMultiheadAttention(16, 4, kdim=6)
    query, key = torch.randn(5, 2, 16), torch.randn(7, 2, 6)
    value = torch.randn(7, 2, 16)
    cases = [
        ((query, key[:, 0], value), {}, "must all be 3-D .* got 3-D, 2-D and 3-D"),
        ((query, value, value), {}, "key has 16 features, this attention expects 6"),
        ((query, key, value[:3]), {}, r"key and value must match in all but features"),
        ((query, key, value), {"key_padding_mask": torch.zeros(2, 7, dtype=torch.long)}, "bool or floating-point"),
        ((query, key, value), {"attn_mask": torch.zeros(5, 6)}, r"attn_mask must have shape \(5, 7\) or \(8, 5, 7\)"),
        ((query, key, value), {"key_padding_mask": torch.zeros(2, 6)}, r"key_padding_mask must have shape \(2, 7\)"),
        ((query, key, value), {"is_causal": True}, "is_causal=True needs attn_mask"),
    ]
    for inputs, kwargs, message in cases:
        with pytest.raises(rs.RanksearchError, match=message):
            attn(*inputs, **kwargs)
    with pytest.raises(rs.RanksearchError, match="embed_dim must be a positive multiple of num_heads, got"):
        UnpackedMultiheadAttention(10, 4)
    with pytest.raises(rs.RanksearchError, match=r"from_mha takes an nn\.MultiheadAttention, got Linear"):
        UnpackedMultiheadAttention.from_mha(nn.Linear(2, 2))
    with pytest.raises(rs.RanksearchError, match=r"unpack_attention takes an nn\.Module, got dict"):
        unpack_attention({})
    with pytest.raises(rs.RanksearchError, match=r"'head' is not an nn\.MultiheadAttention of the model"):
        unpack_in_place(nn.ModuleDict({"head": nn.Linear(2, 2)}), ["head"])


class HFStyleAttention(nn.Module):
    """Separate q/k/v/o Linears, as Hugging Face models write attention: ordinary layers already."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = (p(x).view(batch, length, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # (B, H, L, hd)
        return self.o(out.transpose(1, 2).reshape(batch, length, dim))


def test_hugging_face_style_attention_is_plain_linear_layers():
    model = HFStyleAttention().eval()
    layers = rs.compressible_layers(model)
    assert list(layers) == ["q", "k", "v", "o"]
    x = torch.randn(2, 5, 16)
    full = rs.apply(model, rs.CompressionConfig({n: ("svd", 16) for n in layers}))
    torch.testing.assert_close(full(x), model(x), rtol=0, atol=1e-5)
    low = rs.apply(model, rs.CompressionConfig({n: ("tt", 2) for n in layers}))
    assert low(x).shape == x.shape


# --- nn.TransformerEncoder and its fast path ------------------------------------------------------------


def encoder(batch_first: bool = True) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=batch_first).eval()


def every_layer(model: nn.Module, fraction: float) -> rs.CompressionConfig:
    layers = rs.compressible_layers(model)
    return rs.CompressionConfig({n: ("svd", max(1, int(i.max_ranks["svd"] * fraction))) for n, i in layers.items()})


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of torch's fused encoder-layer kernel (the fast path)."""
    calls = []
    fused = torch._transformer_encoder_layer_fwd

    def counting(*args):
        calls.append(1)
        return fused(*args)

    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", counting)
    return calls


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_encoder_at_full_rank_matches_the_dense_encoder_in_eval(fused_calls):
    dense = encoder()
    x = torch.randn(3, 7, 16)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 5:] = True
    with torch.no_grad():
        dense_out, dense_padded = dense(x), dense(x, src_key_padding_mask=padding)
    assert fused_calls  # the dense encoder takes the fast path
    fused_calls.clear()
    compressed = rs.apply(dense, every_layer(dense, 1.0))
    with torch.no_grad():
        torch.testing.assert_close(compressed(x), dense_out, rtol=0, atol=1e-4)
        padded = compressed(x, src_key_padding_mask=padding)
    # the nested-tensor fast path returns zeros at padded positions; the ordinary path computes them
    torch.testing.assert_close(padded[~padding], dense_padded[~padding], rtol=0, atol=1e-4)
    assert not fused_calls


def test_feed_forward_only_compression_runs_the_factorized_layers_in_eval(fused_calls):
    """Reading linear1.weight no longer fails, and eval computes what training mode computes (dropout 0)."""
    dense = encoder()
    config = rs.CompressionConfig({f"layers.{i}.linear{j}": ("svd", 4) for i in range(2) for j in (1, 2)})
    compressed = rs.apply(dense, config)
    assert all(isinstance(layer.self_attn, nn.MultiheadAttention) for layer in compressed.layers)
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        eval_out = compressed(x)
        train_out = compressed.train()(x)
    torch.testing.assert_close(eval_out, train_out, rtol=0, atol=1e-6)
    assert not fused_calls and (eval_out - dense(x)).abs().max() > 1e-3  # rank 4: not the dense model
    assert compressed.layers[0].linear1.weight.shape == dense.layers[0].linear1.weight.shape


@pytest.mark.parametrize("batch_first", [True, False])
def test_encoder_at_low_rank_trains_and_evaluates(batch_first):
    dense = encoder(batch_first)
    compressed = rs.apply(dense, every_layer(dense, 0.25))
    x = torch.randn(3, 7, 16) if batch_first else torch.randn(7, 3, 16)
    compressed.train()
    compressed(x).square().mean().backward()
    grads = [p.grad for p in compressed.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        out = compressed.eval()(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_costs_count_the_projections_of_packed_and_unpacked_attention_alike():
    """torch's attention runs its projections as functions: count() counts them as their unpacked Linears."""
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 4, batch_first=True)})

    class Self(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner["attn"](x, x, x, need_weights=False)[0]

    packed, unpacked = rs.count(Self(model), (2, 5, 16)), rs.count(Self(unpack_attention(model)), (2, 5, 16))
    assert packed.macs == unpacked.macs == 4 * 2 * 5 * 16 * 16 and unpacked.params == packed.params


# --- a ViT-like model end to end -------------------------------------------------------------------------


class TinyViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)  # (B, 16, 4, 4): 16 patches
        self.position = nn.Parameter(torch.randn(1, 16, 16) * 0.02)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.position  # (B, 16, 16)
        return self.head(self.encoder(tokens).mean(dim=1))


def test_vit_compresses_trains_evaluates_and_round_trips(tmp_path):
    model = TinyViT().eval()
    layers = rs.compressible_layers(model)
    attention = [f"encoder.layers.{i}.self_attn.{p}" for i in range(2) for p in PROJECTIONS]
    assert set(attention) <= set(layers) and {"patch", "head", "encoder.layers.1.linear2"} <= set(layers)
    config = rs.CompressionConfig(
        {
            name: ("tucker2", 8) if name == "patch" else ("svd", max(1, info.max_ranks["svd"] // 2))
            for name, info in layers.items()
        }
    )
    compressed = rs.apply(model, config)
    x = torch.randn(2, 3, 16, 16)
    compressed.train()
    compressed(x).logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None for p in compressed.parameters())
    compressed.eval()
    with torch.no_grad():
        expected = compressed(x)
    assert sum(p.numel() for p in compressed.parameters()) < sum(p.numel() for p in model.parameters())
    path = rs.save(tmp_path / "vit.pt", compressed, config, model)
    loaded = rs.load(path, base_model=TinyViT())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    assert all(layer.activation_relu_or_gelu == 0 for layer in loaded.encoder.layers)  # no fast path after load


def test_a_model_compressed_from_its_unpacked_form_loads_onto_the_unpacked_base(tmp_path):
    """What a study saves (its evaluator holds the unpacked model) loads with ``unpack_attention(base)``."""
    model = unpack_attention(TinyViT())
    config = rs.CompressionConfig({"encoder.layers.0.self_attn.k_proj": ("svd", 4), "head": ("svd", 4)})
    compressed = rs.apply(model, config).eval()
    path = rs.save(tmp_path / "vit.pt", compressed, config, model)
    loaded = rs.load(path, base_model=unpack_attention(TinyViT()))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), compressed(x), rtol=0, atol=0)


@pytest.mark.slow
def test_a_compressed_vit_exports_to_onnx(tmp_path):
    """The factorized layers (and their read-only ``weight``) and the unpacked attention export and run in
    onnxruntime within the exporter's check (1e-4 absolute); about 15 s."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from ranksearch.onnx_export import export_onnx

    model = TinyViT().eval()
    compressed = rs.apply(model, every_layer(model, 0.5))
    exported = export_onnx(compressed, torch.randn(2, 3, 16, 16), tmp_path / "vit.onnx")
    assert exported.max_abs_diff is not None and exported.max_abs_diff < 1e-4


class _AttentionThenHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


def test_count_includes_the_projections_attention_runs_as_functions():
    """A packed nn.MultiheadAttention runs q/k/v/out as functions: count() still counts them (4 x L x E x E), so
    dense and compressed models are counted alike and a 50%-MACs config lands at <= 50%."""
    from ranksearch.heuristics import uniform_config

    torch.manual_seed(0)
    model = _AttentionThenHead().eval()
    length, embed = 16, 64
    dense = rs.count(model, (1, length, embed))
    assert dense.macs == 4 * length * embed * embed + length * embed * 10
    assert dense.params == sum(p.numel() for p in model.parameters())
    config = uniform_config(model, cost_fraction=0.5, input_shape=(1, length, embed), method="svd")
    ratio = rs.count(rs.apply(model, config), (1, length, embed)).macs / dense.macs
    assert 0.4 < ratio <= 0.5
