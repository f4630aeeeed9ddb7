"""export_onnx: every registered method's factorized layers run in onnxruntime as in torch, with any batch size.

Tolerance: float32 models with O(1) outputs; onnxruntime must match torch within 1e-4 absolute (observed
differences are about 1e-7). The tests that export need onnx, onnxscript and onnxruntime (the onnx extra)
and skip without them; the argument and missing-extra tests run everywhere.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from _helpers import calibration_if_needed, mid_rank
from torch import nn

import ranksearch as rs
from ranksearch.decompositions import available_methods, get_method
from ranksearch.onnx_export import (
    OnnxExport,
    OnnxExportError,
    OnnxExtraMissingError,
    OnnxVerificationError,
    export_onnx,
)

pytestmark = pytest.mark.slow  # ONNX exports through torch's exporter and onnxruntime

ATOL = 1e-4
EXTRA = "the onnx extra is not installed: pip install 'ranksearch[onnx]'"


@pytest.fixture
def ort():
    pytest.importorskip("onnx", reason=EXTRA)
    pytest.importorskip("onnxscript", reason=EXTRA)
    return pytest.importorskip("onnxruntime", reason=EXTRA)


def conv_model() -> nn.Module:
    """A strided conv (the one compressed), BN, ReLU and a second conv: O(1) outputs."""
    return nn.Sequential(
        nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)
    )


def linear_model() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 5))


def methods_for(layer: nn.Module) -> list[str]:
    """Every registered method that can compress ``layer``."""
    return [m for m in available_methods() if get_method(m).unsupported_reason(layer) is None]


def run_onnx(ort, path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def check_export(ort, small: nn.Module, x: torch.Tensor, path) -> OnnxExport:
    """Export with batch 2, check the result, then run the file with batch 5 against torch."""
    result = export_onnx(small, x, path)
    assert result.path == path and path.is_file()
    assert result.dynamic_batch and result.opset >= 18
    assert result.max_abs_diff is not None and result.max_abs_diff < ATOL
    x5 = torch.randn(5, *x.shape[1:])
    with torch.no_grad():
        expected = small.eval()(x5).numpy()
    assert np.abs(expected).max() > 0.1  # O(1) outputs: the absolute tolerance means something
    np.testing.assert_allclose(run_onnx(ort, path, x5), expected, rtol=0, atol=ATOL)
    return result


@pytest.mark.parametrize("method", methods_for(conv_model()[0]))
def test_each_method_on_a_conv_matches_torch_at_any_batch_size(ort, method, tmp_path):
    model = conv_model()
    calibration = calibration_if_needed(method, model, torch.randn(4, 6, 9, 11))
    config = rs.CompressionConfig({"0": (method, mid_rank(get_method(method), model[0]))})
    small = rs.apply(model, config, calibration=calibration)
    assert isinstance(small[0], rs.FactorizedLayer)
    check_export(ort, small, torch.randn(2, 6, 9, 11), tmp_path / f"{method}.onnx")


@pytest.mark.parametrize("method", methods_for(linear_model()[0]))
def test_each_linear_method_matches_torch_at_any_batch_size(ort, method, tmp_path):
    model = linear_model()
    calibration = calibration_if_needed(method, model, torch.randn(8, 12))
    config = rs.CompressionConfig({"0": (method, mid_rank(get_method(method), model[0]))})
    small = rs.apply(model, config, calibration=calibration)
    assert isinstance(small[0], rs.FactorizedLayer)
    check_export(ort, small, torch.randn(2, 12), tmp_path / f"{method}.onnx")


def test_the_users_model_is_left_as_it_was(ort, tmp_path):
    model = rs.apply(conv_model(), rs.CompressionConfig({"0": ("tucker2", (4, 3))})).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = export_onnx(model, torch.randn(2, 6, 8, 8), tmp_path / "m.onnx", verify=False, opset=18)
    assert result.max_abs_diff is None and result.opset == 18 and result.seconds > 0
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN running stats too


def test_a_model_that_fixes_its_batch_size_reports_a_static_batch(ort, tmp_path):
    class FixedBatch(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(2 * 12).tanh()

    result = export_onnx(FixedBatch(), torch.randn(2, 12), tmp_path / "fixed.onnx")
    assert not result.dynamic_batch and result.max_abs_diff < ATOL


def test_without_onnxruntime_the_export_is_not_verified(ort, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    result = export_onnx(linear_model(), torch.randn(2, 12), tmp_path / "m.onnx")
    assert result.max_abs_diff is None and result.path.is_file()


def test_a_mismatch_between_onnxruntime_and_torch_is_an_error(ort, tmp_path):
    class ExportsDifferently(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1 if torch.compiler.is_exporting() else x

    with pytest.raises(OnnxVerificationError, match=r"differs from torch by up to 1 .*atol=0\.0001"):
        export_onnx(ExportsDifferently(), torch.randn(2, 3), tmp_path / "m.onnx")


def test_a_model_torch_cannot_export_is_a_one_line_error(ort, tmp_path):
    class Refuses(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.compiler.is_exporting():
                raise RuntimeError("no export here")
            return x

    with pytest.raises(OnnxExportError, match=r"^torch.onnx.export failed for Refuses: RuntimeError: no export here"):
        export_onnx(Refuses(), torch.randn(2, 3), tmp_path / "m.onnx")


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_missing_extra_names_the_module_and_the_install_command(monkeypatch, missing, tmp_path):
    for name in ("onnx", "onnxscript"):  # the other one imports fine, installed or not
        monkeypatch.setitem(sys.modules, name, None if name == missing else types.ModuleType(name))
    with pytest.raises(OnnxExtraMissingError) as info:
        export_onnx(linear_model(), torch.randn(2, 12), tmp_path / "m.onnx")
    message = str(info.value)
    assert message.startswith("ONNX export needs the onnx extra: pip install 'ranksearch[onnx]'")
    assert f"{missing!r}" in message and "\n" not in message
    assert isinstance(info.value, rs.RanksearchError)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"example_input": [[0.0] * 12]}, r"example_input must be a torch.Tensor .*got list"),
        ({"example_input": np.zeros((2, 12), dtype=np.float32)}, r"example_input must be a torch.Tensor .*ndarray"),
        ({"model": lambda x: x}, r"model must be a torch.nn.Module, got function"),
        ({"path": "no-such-dir/m.onnx"}, r"directory 'no-such-dir' does not exist"),
        ({"atol": -1.0}, r"rtol and atol must be >= 0"),
        ({"opset": "18"}, r"opset must be a positive int or None"),
        ({"example_input": torch.randn(2, 7)}, r"the model fails on example_input of shape \(2, 7\)"),
        ({"example_input": {"x": [1.0]}}, r"example_input must be a torch.Tensor .*got dict \{'x': \['float'\]\}"),
        ({"example_input": {"x": torch.randn(2, 12)}}, r"the model fails on example_input \{'x': \(2, 12\)\}: TypeErr"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("onnx", "onnxscript"):  # the argument checks do not depend on the extra
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    args = {"model": linear_model(), "example_input": torch.randn(2, 12), "path": tmp_path / "m.onnx", **kwargs}
    with pytest.raises(OnnxExportError, match=match):
        export_onnx(args.pop("model"), args.pop("example_input"), args.pop("path"), **args)


class Keywords(nn.Module):
    """A Hugging Face-like model: ``input_ids`` and ``attention_mask`` keywords in, a dict with logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, 8)
        return {"logits": self.head(pooled)}


def test_a_dict_input_model_exports_with_named_inputs_and_any_batch_size(ort, tmp_path):
    torch.manual_seed(0)
    small = rs.apply(Keywords(), rs.CompressionConfig({"head": ("svd", 2)}))
    example = {"input_ids": torch.randint(0, 11, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    result = export_onnx(small, example, tmp_path / "keywords.onnx")
    assert result.dynamic_batch and result.max_abs_diff is not None and result.max_abs_diff < ATOL
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    five = {"input_ids": torch.randint(0, 11, (5, 5)), "attention_mask": torch.randint(0, 2, (5, 5))}
    (got,) = session.run(None, {name: tensor.numpy() for name, tensor in five.items()})
    with torch.no_grad():
        expected = small(**five)["logits"].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_a_model_of_two_positional_inputs_exports(ort, tmp_path):
    model = nn.Bilinear(4, 3, 2)
    result = export_onnx(model, (torch.randn(2, 4), torch.randn(2, 3)), tmp_path / "pair.onnx")
    assert result.dynamic_batch and result.max_abs_diff < ATOL


def test_a_decoder_cache_in_the_outputs_says_how_to_export_without_it(ort, tmp_path):
    class DynamicCache:  # what a Hugging Face decoder returns beside its logits with use_cache=True
        pass

    class Decoder(nn.Module):
        def forward(self, x: torch.Tensor) -> dict:
            return {"logits": x * 2, "past_key_values": DynamicCache()}

    with pytest.raises(OnnxExportError, match=r"got DynamicCache \(.*config.use_cache=False.*only the logits\)"):
        export_onnx(Decoder(), torch.randn(2, 3), tmp_path / "m.onnx")
