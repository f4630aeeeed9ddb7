"""save/load of compressed models: weights come from the file, the base model only gives the architecture.

Round trips are exact: the loaded model and the saved one are float32 models on the CPU running the same
ops on the same weights, so their eval-mode outputs must be bitwise equal (``torch.equal``, i.e. a max abs
difference of 0). Every saved model is perturbed first (weights and BatchNorm statistics, as a fine-tune
would), so an output match proves the weights were read from the file, not decomposed again.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from _helpers import calibration_if_needed
from torch import nn

import ranksearch as rs
from ranksearch.models import build_model
from ranksearch.saving import FORMAT, VERSION, base_signature, read

CONV, LINEAR = "3.0", "12"  # in small_cnn(width=4): a Conv2d(4, 8, 3) and the Linear(256, 10) head
RESNET_OPTIONS = {"in_channels": 3, "num_classes": 7}  # not the defaults: the options must be used
RESNET_CONFIG = rs.CompressionConfig(
    {
        "conv1": ("svd", 8),
        "layers.0.0.conv1": ("tucker2", (8, 6)),
        "layers.0.1.conv2": ("tucker2_hooi", (6, 8)),
        "layers.1.0.conv2": ("cp", 6),
        "layers.1.2.conv1": "dense",
        "layers.2.0.conv1": ("tt", (8, 12, 8)),
        "fc": ("tt", (3, 2)),
    }
)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", in_channels=1, width=4)


def resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet20", **RESNET_OPTIONS)


def half_rank(model: nn.Module, layer: str, method: str) -> object:
    """A valid rank for any method: half of each maximum (at least 1)."""
    top = rs.compressible_layers(model)[layer].max_ranks[method]
    return tuple(max(1, r // 2) for r in top) if isinstance(top, tuple) else max(1, top // 2)


def fine_tune_a_little(small: nn.Module, x: torch.Tensor) -> nn.Module:
    """Move every parameter and the BatchNorm statistics away from what apply() gave."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in small.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=generator))
        small.train()(x)  # updates the running statistics
    return small.eval()


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def saved_small_cnn(tmp_path, config=None) -> tuple[object, nn.Module]:
    """A user model (no builtin) saved with a conv and a Linear compressed: (path, compressed model)."""
    model = small_cnn()
    config = config or rs.CompressionConfig({CONV: ("tucker2", (4, 2)), LINEAR: ("svd", 5)})
    small = rs.apply(model, config)
    return rs.save(tmp_path / "model.pt", small, config, model), small


def tamper(path, change) -> None:
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


# --- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", rs.available_methods())
def test_every_method_round_trips_exactly_with_weights_from_the_file(method, tmp_path):
    model = small_cnn()
    layers = rs.compressible_layers(model)
    assert method in layers[CONV].methods
    entries = {CONV: (method, half_rank(model, CONV, method))}
    if method in layers[LINEAR].methods:
        entries[LINEAR] = (method, half_rank(model, LINEAR, method))
    config = rs.CompressionConfig(entries)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    small = fine_tune_a_little(rs.apply(model, config, calibration=calibration_if_needed(method, model, x)), x)
    expected = outputs(small, x)

    path = rs.save(tmp_path / "model.pt", small, config, model)
    other = small_cnn(seed=3)  # the same architecture, other weights
    before = state(other)
    other.train()
    loaded = rs.load(path, base_model=other)

    assert not torch.equal(outputs(copy.deepcopy(other).eval(), x), outputs(model.eval(), x))
    assert torch.equal(outputs(loaded, x), expected)  # exact: max abs diff 0 in float32
    assert not loaded.training and not any(m.training for m in loaded.modules())
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
    for name in entries:
        layer, saved = loaded.get_submodule(name), small.get_submodule(name)
        assert isinstance(layer, rs.FactorizedLayer)
        assert layer.method == saved.method == method and layer.rank == saved.rank
    assert_same_state(other, before)  # the base model is not modified...
    assert other.training and all(type(other.get_submodule(n)) in (nn.Conv2d, nn.Linear) for n in entries)
    assert loaded is not other


def test_a_builtin_model_loads_without_a_base_model_with_a_mixed_config(tmp_path):
    model = resnet()
    cache = rs.FactorCache()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    small = fine_tune_a_little(rs.apply(model, RESNET_CONFIG, cache=cache), x)
    builtin = {"name": "resnet20", "options": RESNET_OPTIONS}
    path = rs.save(tmp_path / "run" / "model.pt", small, RESNET_CONFIG, model, builtin=builtin, cache=cache)

    loaded = rs.load(path)
    assert torch.equal(outputs(loaded, x), outputs(small, x))
    assert outputs(loaded, x).shape == (3, 7)
    assert not loaded.training
    for name, (method, _) in RESNET_CONFIG.compressed().items():
        assert loaded.get_submodule(name).method == method
    assert type(loaded.get_submodule("layers.1.2.conv1")) is nn.Conv2d  # "dense" stays dense
    # a base model may still be given for a built-in model; its weights do not matter either
    assert torch.equal(outputs(rs.load(path, base_model=resnet(seed=5)), x), outputs(small, x))


def test_load_decomposes_nothing(tmp_path, monkeypatch):
    config = rs.CompressionConfig({CONV: ("cp", 4), "6.0": ("tucker2_hooi", (6, 4)), LINEAR: ("tt", (4, 2))})
    path, small = saved_small_cnn(tmp_path, config)

    def refuse(*args, **kwargs):
        raise AssertionError("load must not decompose")

    monkeypatch.setattr(rs.FactorCache, "factors", refuse)
    for name in rs.available_methods():
        monkeypatch.setattr(type(rs.get_method(name)), "prepare", refuse)
        monkeypatch.setattr(type(rs.get_method(name)), "factorize", refuse)
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(outputs(rs.load(path, base_model=small_cnn(seed=4)), x), outputs(small.eval(), x))


# --- what is recorded ----------------------------------------------------------------------------------


def test_save_records_config_metadata_and_structure(tmp_path):
    model = small_cnn()
    config = rs.CompressionConfig({CONV: ("tt", (2, 6, 4)), "6.0": "dense", LINEAR: ("svd", 5)})
    small = rs.apply(model, config)
    metadata = {"study": "demo", "trial": 7, "accuracy": 0.875, "rule": "knee", "tags": ["a", "b"]}
    path = rs.save(tmp_path / "a" / "b" / "model.pt", small, config, model, metadata=metadata)

    assert path == tmp_path / "a" / "b" / "model.pt" and path.is_file()  # folders created
    payload = read(path)
    assert (payload["format"], payload["version"]) == (FORMAT, VERSION)
    assert payload["metadata"] == metadata
    assert payload["builtin"] is None
    assert rs.CompressionConfig.from_json(json.dumps(payload["config"])) == config  # JSON-ready, equal to cfg
    assert payload["config"] == config.to_dict()
    assert payload["base_signature"] == base_signature(model)
    assert payload["base_signature"]["12.weight"] == [10, 256]
    assert set(payload["factor_shapes"]) == {CONV, LINEAR}  # dense entries have no factors
    assert payload["factor_shapes"][LINEAR] == [[10, 5], [5, 256]]
    assert [len(shape) for shape in payload["factor_shapes"][CONV]] == [3, 3, 3, 3]
    assert payload["state_dict"].keys() == small.state_dict().keys()
    # plain data only: the file opens with torch.load(weights_only=True), which read() uses
    assert torch.load(path, weights_only=True)["metadata"] == metadata


def test_save_records_the_builtin_spec(tmp_path):
    model = small_cnn()
    config = rs.CompressionConfig({CONV: ("svd", 3)})
    builtin = {"name": "small_cnn", "options": {"in_channels": 1, "width": 4}}
    path = rs.save(tmp_path / "model.pt", rs.apply(model, config), config, model, builtin=builtin)
    assert read(path)["builtin"] == builtin and read(path)["metadata"] == {}
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(outputs(rs.load(path), x), outputs(rs.apply(model, config).eval(), x))


# --- errors --------------------------------------------------------------------------------------------


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(rs.RanksearchError, match=r"model file '.*nope\.pt' does not exist"):
        rs.load(tmp_path / "nope.pt")
    with pytest.raises(rs.RanksearchError, match="does not exist"):
        read(tmp_path / "nope.pt")


def test_a_file_that_is_not_a_torch_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(rs.RanksearchError, match=r"'.*model\.pt' is not a readable ranksearch model file"):
        rs.load(path, base_model=small_cnn())


@pytest.mark.parametrize(
    "content",
    [small_cnn().state_dict(), {"format": "something-else", "version": 1}, torch.zeros(3), ["a", "list"]],
    ids=["state-dict", "other-format", "tensor", "list"],
)
def test_a_torch_file_that_is_not_a_ranksearch_model(content, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(content, path)
    with pytest.raises(rs.RanksearchError, match=r"is not a ranksearch compressed model \(written by"):
        rs.load(path, base_model=small_cnn())


@pytest.mark.parametrize("version", [2, 0, None])
def test_another_format_version_is_refused(version, tmp_path):
    path, _ = saved_small_cnn(tmp_path)
    tamper(path, lambda p: p.update(version=version))
    with pytest.raises(rs.RanksearchError, match=rf"has format version {version}; this ranksearch reads {VERSION}"):
        rs.load(path, base_model=small_cnn())


def test_a_user_model_needs_its_architecture(tmp_path):
    path, _ = saved_small_cnn(tmp_path)
    with pytest.raises(rs.RanksearchError, match=r"made from a user model: pass its architecture, load\(path, base"):
        rs.load(path)


@pytest.mark.parametrize(
    "bad", ["small_cnn", {"3.0": 1}, small_cnn().state_dict(), nn.Conv2d], ids=["str", "dict", "state-dict", "class"]
)
def test_base_model_must_be_a_module(bad, tmp_path):
    path, _ = saved_small_cnn(tmp_path)
    with pytest.raises(rs.RanksearchError, match=rf"base_model must be a torch\.nn\.Module, got {type(bad).__name__}"):
        rs.load(path, base_model=bad)


@pytest.mark.parametrize(
    "other, match",
    [
        (
            lambda: build_model("small_cnn", in_channels=1, width=8),
            r"'0\.0\.weight' has shape \(8, 1, 3, 3\) here but \(4, 1, 3, 3\) in the file",
        ),
        (
            lambda: build_model("small_cnn", in_channels=1, width=4, num_classes=3),
            r"'12\.weight' has shape \(3, 256\) here but \(10, 256\) in the file \(2 shapes differ, 0 missing",
        ),
        (
            lambda: nn.Sequential(*build_model("small_cnn", in_channels=1, width=4), nn.Linear(10, 2)),
            r"this model has '13\.weight', the file's base model does not \(0 shapes differ, 0 missing, 2 extra\)",
        ),
        (
            lambda: nn.Sequential(*list(build_model("small_cnn", in_channels=1, width=4))[:-1]),
            r"the file's base model has '12\.weight', this one does not \(0 shapes differ, 2 missing, 0 extra\)",
        ),
        (
            lambda: build_model("resnet20"),
            r"different base model: the file's base model has '0\.0\.weight', this one does not",
        ),
    ],
    ids=["wider", "other-classes", "extra-layer", "missing-layer", "other-model"],
)
def test_a_different_base_model_is_refused_with_the_tensor_and_shapes(other, match, tmp_path):
    path, _ = saved_small_cnn(tmp_path)
    with pytest.raises(rs.RanksearchError, match=r"'.*model\.pt' was made from a different base model: .*"):
        rs.load(path, base_model=other())
    with pytest.raises(rs.RanksearchError, match=match):
        rs.load(path, base_model=other())


def test_the_compressed_model_is_not_a_base_model(tmp_path):
    path, small = saved_small_cnn(tmp_path)
    with pytest.raises(rs.RanksearchError, match=r"the file's base model has '3\.0\.weight', this one does not"):
        rs.load(path, base_model=small)


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda p: p["state_dict"].update({"3.0.0.weight": torch.zeros(2, 8, 1, 1)}),
            r"size mismatch for 3\.0\.0\.weight",
        ),
        (lambda p: p["state_dict"].pop("12.1.bias"), r"Missing key\(s\) in state_dict: \"12\.1\.bias\""),
        (lambda p: p["state_dict"].update({"extra": torch.zeros(1)}), r"Unexpected key\(s\) in state_dict: \"extra\""),
        (lambda p: p["factor_shapes"].update({"12": [[10, 3], [3, 256]]}), r"size mismatch for 12\.0\.weight"),
    ],
    ids=["wrong-shape", "missing-key", "unexpected-key", "factor-shapes"],
)
def test_weights_that_do_not_fit_the_rebuilt_model(change, match, tmp_path):
    path, _ = saved_small_cnn(tmp_path)
    tamper(path, change)
    with pytest.raises(rs.RanksearchError, match=r"the weights in '.*model\.pt' do not fit the rebuilt model: "):
        rs.load(path, base_model=small_cnn())
    with pytest.raises(rs.RanksearchError, match=match):
        rs.load(path, base_model=small_cnn())


def test_an_unknown_builtin_model_is_named(tmp_path):
    path, _ = saved_small_cnn(tmp_path)
    tamper(path, lambda p: p.update(builtin={"name": "vgg99", "options": {}}))
    with pytest.raises(rs.RanksearchError, match=r"unknown model 'vgg99'; built-in models: small_cnn"):
        rs.load(path)


def test_metadata_must_be_plain_json(tmp_path):
    import numpy as np

    model = small_cnn()
    cfg = rs.CompressionConfig({"3.0": ("svd", 2)})
    with pytest.raises(rs.RanksearchError, match="metadata must hold plain JSON values"):
        rs.save(tmp_path / "m.pt", rs.apply(model, cfg), cfg, model, metadata={"accuracy": np.float32(0.9)})


def test_the_base_models_weights_do_not_matter_even_non_finite(tmp_path):
    path, small = saved_small_cnn(tmp_path)
    base = small_cnn(seed=5)
    with torch.no_grad():
        for parameter in base.parameters():
            parameter.fill_(float("nan"))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(outputs(rs.load(path, base_model=base), x), outputs(small.eval(), x))


@pytest.mark.parametrize("key", ["config", "factor_shapes", "base_signature", "state_dict"])
def test_a_damaged_file_names_what_it_lacks(key, tmp_path):
    path, _ = saved_small_cnn(tmp_path)
    tamper(path, lambda payload: payload.pop(key))
    with pytest.raises(rs.RanksearchError, match=f"is damaged: it lacks {key}"):
        rs.load(path, base_model=small_cnn())


def test_missing_factor_shapes_of_a_layer(tmp_path):
    path, _ = saved_small_cnn(tmp_path)
    tamper(path, lambda payload: payload["factor_shapes"].clear())
    with pytest.raises(rs.RanksearchError, match="no factor shapes for layer"):
        rs.load(path, base_model=small_cnn())


def test_an_interrupted_save_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path, small = saved_small_cnn(tmp_path)
    before = path.read_bytes()

    def broken(payload, target):
        Path(target).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        rs.save(path, small, rs.CompressionConfig({CONV: ("tucker2", (4, 2)), LINEAR: ("svd", 5)}), small_cnn())
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_the_state_dicts_module_versions_survive_a_round_trip(tmp_path):
    """Some modules read their state version when loading (torchvision's MNASNet refuses to load without it):
    ``save`` keeps the state dict's ``_metadata``."""

    class Versioned(nn.Module):
        _version = 2

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

        def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
            if local_metadata.get("version") != 2:
                raise ValueError(f"version should be 2, got {local_metadata.get('version')}")
            super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    torch.manual_seed(0)
    model = nn.Sequential(Versioned(), nn.Linear(8, 4))
    config = rs.CompressionConfig({"1": ("svd", 2)})
    small = rs.apply(model, config)
    rs.save(tmp_path / "m.pt", small, config, model)
    loaded = rs.load(tmp_path / "m.pt", base_model=model)
    x = torch.randn(3, 8)
    assert torch.equal(loaded(x), small(x))
