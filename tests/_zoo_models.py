"""The zoo matrix: models of torchvision, timm and transformers, built without downloading anything, and
the checks each one goes through. The one place for both: ``tests/test_zoo.py`` asserts on the results,
``benchmarks/zoo_matrix.py`` tabulates them (``docs/ZOO.md``).

Per model (:func:`check_model`, float32, CPU, batch 2, small inputs):

1. listing: :func:`~ranksearch.compressible_layers` and :func:`~ranksearch.skipped_layers` (with reasons);
2. full-rank exactness: every layer at its largest rank (SVD, else Tucker-2: both reconstruct the weight
   exactly there), max ``|compressed - dense|`` of the eval-mode output;
3. a uniform config at 50% of the dense MACs (SVD; Tucker-2 when SVD cannot reach it): the MACs ratio by
   :func:`ranksearch.costs.count` (the dense model counted with ``nn.MultiheadAttention`` unpacked, as
   ``uniform_config`` counts it), forward in train and in eval mode;
4. :func:`ranksearch.saving.save` / :func:`~ranksearch.saving.load` of that model: max output difference;
5. optionally :func:`ranksearch.onnx_export.export_onnx` of that model, checked against onnxruntime.

Weights a builder sets to zero (torchvision's ViT head) are drawn at random first (:func:`build_model`).
A step that raises is recorded (``ZooResult.errors``) and the steps that need its result are not run.
The packages are imported only when a model is built or listed: without them this module costs nothing.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

INSTALL = "pip install -c constraints-zoo.txt -e '.[zoo]'"
LIBRARIES = ("torchvision", "timm", "transformers")
EXACT_METHODS = ("svd", "tucker2")  # exact at their largest rank (CP and TT are fits, not identities)
UNIFORM_METHODS = ("svd", "tucker2")  # tried in this order for the 50%-MACs config
MACS_TARGET = 0.5
MACS_SLACK = 1e-3  # uniform_config lands on the target from below: the slack is for rounding only
# Full-rank tolerance, relative to max|dense output| (float32: one more matmul per layer reorders sums).
# Measured on 20 models of the three libraries: 6e-8 to 1.6e-5 (swin_v2_t) of the output scale. No
# absolute term: outputs of randomly initialized models can be tiny (mobilenet_v3_small's max is 9e-10),
# where an absolute tolerance would pass anything.
FULL_RANK_RTOL = 1e-4
BATCH = 2


# Failures of ranksearch itself that the matrix found (docs/ZOO.md), by model id prefix: the test expects
# them (strict xfail: a fix makes it say so); the table notes them.
KNOWN_ISSUES: dict[str, str] = {}
ONNX_KNOWN_ISSUES: dict[str, str] = {
    "transformers/gpt2": (
        "export_onnx refuses the DynamicCache in GPT-2's outputs (config.use_cache=True; the error says to build "
        "it with use_cache=False or export a module returning the logits)"
    ),
}


def known_issue(case: ZooCase, *, onnx: bool = False) -> str | None:
    """The known ranksearch failure of ``case`` (of its ONNX export with ``onnx``), or None."""
    issues = ONNX_KNOWN_ISSUES if onnx else KNOWN_ISSUES
    return next((issue for prefix, issue in issues.items() if case.id.startswith(prefix)), None)


def full_rank_tolerance(output_scale: float) -> float:
    """The largest full-rank difference accepted for a dense output of max magnitude ``output_scale``."""
    return FULL_RANK_RTOL * output_scale


@functools.cache
def import_problem(library: str) -> str | None:
    """Why ``library`` cannot be used here (a skip reason that says how to install it), or None."""
    try:
        importlib.import_module(library)
    except ImportError as error:
        if error.name == library:
            return f"{library} not installed: {INSTALL}"
        return f"{library} does not import here ({error}): {INSTALL}"
    except Exception as error:  # e.g. a torchvision built for another torch fails while registering its ops
        return f"{library} does not import here ({type(error).__name__}: {error}): {INSTALL}"
    return None


@dataclass(frozen=True)
class ZooCase:
    """One model of the matrix.

    Attributes:
        library: ``"torchvision"``, ``"timm"`` or ``"transformers"``.
        name: the model's name in its library (transformers: the family).
        build: makes the model (randomly initialized, nothing downloaded).
        example: makes the example input (a tensor, or a dict of keyword inputs).
        default: in the subset the test runs without ``RANKSEARCH_ZOO=full``.
    """

    library: str
    name: str
    build: Callable[[], nn.Module] = field(repr=False, compare=False)
    example: Callable[[], object] = field(repr=False, compare=False)
    default: bool = False

    @property
    def id(self) -> str:
        return f"{self.library}/{self.name}"


# --- torchvision: every classification model ---------------------------------------------------------------

TORCHVISION_DEFAULT = (
    "resnet18",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_x_400mf",
    "vit_b_16",
    "swin_t",
)
# (input side, builder options): 64x64 unless the model needs more (or its patch grid allows less)
TORCHVISION_SPECIAL: dict[str, tuple[int, dict[str, object]]] = {
    "googlenet": (64, {"init_weights": True}),  # init_weights=None warns about a future default
    "inception_v3": (128, {"init_weights": True}),  # its auxiliary head pools 5x5 after a 1/16 downsampling
    "maxvit_t": (224, {}),  # 7x7 partitions at 1/32: 224 is the smallest side
    "vit_b_16": (32, {"image_size": 32}),
    "vit_b_32": (32, {"image_size": 32}),
    "vit_l_16": (32, {"image_size": 32}),
    "vit_l_32": (32, {"image_size": 32}),
    "vit_h_14": (28, {"image_size": 28}),
}


def _image(side: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(BATCH, 3, side, side)


def _torchvision_case(name: str) -> ZooCase:
    side, options = TORCHVISION_SPECIAL.get(name, (64, {}))

    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **options)

    return ZooCase("torchvision", name, build, _image(side), default=name in TORCHVISION_DEFAULT)


def torchvision_cases(full: bool) -> list[ZooCase]:
    """Every classification model of torchvision (``full``, when it imports), else the default subset."""
    names = list(TORCHVISION_DEFAULT)
    if full and import_problem("torchvision") is None:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
    return [_torchvision_case(name) for name in names]


# --- timm: one or two small members per family -------------------------------------------------------------

# name -> (input side, create_model options): one or two small members per family
TIMM_MODELS: dict[str, tuple[int, dict[str, object]]] = {
    "resnet18": (64, {}),
    "resnet50": (64, {}),
    "efficientnet_b0": (64, {}),
    "efficientnet_lite0": (64, {}),
    "mobilenetv3_small_100": (64, {}),
    "mobilenetv2_100": (64, {}),
    "convnext_atto": (64, {}),
    "regnetx_002": (64, {}),
    "regnety_002": (64, {}),
    "vit_tiny_patch16_224": (32, {"img_size": 32}),
    "vit_small_patch16_224": (32, {"img_size": 32}),
    "deit_tiny_patch16_224": (32, {"img_size": 32}),
    "deit_tiny_distilled_patch16_224": (32, {"img_size": 32}),
    "swin_tiny_patch4_window7_224": (224, {}),
}
TIMM_DEFAULT = ("resnet18", "mobilenetv3_small_100", "vit_tiny_patch16_224")


def _timm_case(name: str) -> ZooCase:
    side, options = TIMM_MODELS[name]

    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, **options)

    return ZooCase("timm", name, build, _image(side), default=name in TIMM_DEFAULT)


def timm_cases(full: bool) -> list[ZooCase]:
    """The timm models of the matrix (``full``), else the default subset."""
    return [_timm_case(name) for name in TIMM_MODELS if full or name in TIMM_DEFAULT]


# --- transformers: small configs, from_config ---------------------------------------------------------------

VOCAB, SEQUENCE = 100, 16
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
# family -> (config class, config options, auto class)
TRANSFORMERS_MODELS: dict[str, tuple[str, dict[str, object], str]] = {
    "bert": (
        "BertConfig",
        {**TINY, "vocab_size": VOCAB, "max_position_embeddings": 64, "num_labels": 3},
        "AutoModelForSequenceClassification",
    ),
    "distilbert": (
        "DistilBertConfig",
        {"vocab_size": VOCAB, "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "num_labels": 3},
        "AutoModelForSequenceClassification",
    ),
    "vit": (
        "ViTConfig",
        {**TINY, "image_size": 32, "patch_size": 8, "num_labels": 10},
        "AutoModelForImageClassification",
    ),
    "gpt2": (
        "GPT2Config",
        {
            "vocab_size": VOCAB,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 2,
            "n_positions": 64,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
        "AutoModelForCausalLM",
    ),
}


def _tokens() -> dict[str, torch.Tensor]:
    """Token ids with the second sequence padded for its last quarter (the mask matters)."""
    mask = torch.ones(BATCH, SEQUENCE, dtype=torch.long)
    mask[1, -SEQUENCE // 4 :] = 0
    return {"input_ids": torch.randint(1, VOCAB, (BATCH, SEQUENCE)), "attention_mask": mask}


def _transformers_case(family: str) -> ZooCase:
    config_class, options, auto_class = TRANSFORMERS_MODELS[family]

    def build() -> nn.Module:
        import transformers

        config = getattr(transformers, config_class)(**options)
        return getattr(transformers, auto_class).from_config(config)

    def example() -> object:
        return {"pixel_values": torch.randn(BATCH, 3, 32, 32)} if family == "vit" else _tokens()

    return ZooCase("transformers", family, build, example, default=True)


def transformers_cases() -> list[ZooCase]:
    """BERT, DistilBERT, ViT and GPT-2 from small configs (all in the default subset: they are tiny)."""
    return [_transformers_case(family) for family in TRANSFORMERS_MODELS]


def cases(full: bool, libraries: tuple[str, ...] = LIBRARIES) -> list[ZooCase]:
    """The matrix's models of ``libraries``: all of them (``full``) or the default subset."""
    makers = {
        "torchvision": lambda: torchvision_cases(full),
        "timm": lambda: timm_cases(full),
        "transformers": transformers_cases,
    }
    return [case for library in libraries for case in makers[library]()]


# --- the checks ---------------------------------------------------------------------------------------------


@dataclass
class ZooResult:
    """What :func:`check_model` measured; None where a step did not run (see ``errors``)."""

    case: ZooCase
    compressible: int | None = None
    skipped: int | None = None
    skip_reasons: list[tuple[str, int]] = field(default_factory=list)  # (reason, layers), most frequent first
    full_rank_layers: int | None = None
    full_rank_diff: float | None = None
    output_scale: float | None = None
    uniform_method: str | None = None
    macs_ratio: float | None = None  # compressed / dense, the dense model counted with attention unpacked
    left_dense: str | None = None  # uniform_config's warning: layers never called as modules stay dense
    train_ok: bool | None = None
    eval_ok: bool | None = None
    save_load_diff: float | None = None
    onnx: str = "not run"
    seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)  # step -> "Error: message"


def _output(model: nn.Module, inputs: object) -> torch.Tensor:
    from ranksearch.adapters import BatchAdapter

    with torch.no_grad():
        return BatchAdapter().forward(model, inputs).float()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise AssertionError(f"output shape {tuple(a.shape)} differs from {tuple(b.shape)}")
    return float((a - b).abs().max())


_NAMES = re.compile(r" \([^()]*\)|'[^']*'")  # layer names in a reason: "(a.weight, b.weight)", "'encoder'"


def _listing(result: ZooResult, model: nn.Module) -> dict:
    from ranksearch import compressible_layers, skipped_layers

    layers, skipped = compressible_layers(model), skipped_layers(model)
    result.compressible, result.skipped = len(layers), len(skipped)
    result.skip_reasons = Counter(_NAMES.sub("", reason) for reason in skipped.values()).most_common()
    return layers


def full_rank_config(layers: dict) -> object:
    """Every layer that an exact method supports, at that method's largest rank."""
    from ranksearch import CompressionConfig

    entries = {}
    for name, info in layers.items():
        method = next((m for m in EXACT_METHODS if m in info.methods), None)
        if method is not None:
            entries[name] = (method, info.max_ranks[method])
    return CompressionConfig(entries)


def _full_rank(result: ZooResult, model: nn.Module, inputs: object, dense: torch.Tensor, context: tuple) -> None:
    from ranksearch import apply

    layers, cache = context
    config = full_rank_config(layers)
    result.full_rank_layers = len(config)
    result.output_scale = float(dense.abs().max())
    result.full_rank_diff = _max_diff(_output(apply(model, config, cache=cache), inputs), dense)


def _uniform(result: ZooResult, model: nn.Module, inputs: object, dense: torch.Tensor, cache: object) -> tuple:
    """The 50%-MACs model and its config; the MACs ratio and the train/eval forwards in ``result``."""
    from ranksearch import RanksearchError, apply, count
    from ranksearch.heuristics import uniform_config

    errors = []
    for method in UNIFORM_METHODS:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                config = uniform_config(model, cost_fraction=MACS_TARGET, input_shape=inputs, method=method)
            left = [str(w.message) for w in caught if "leaves" in str(w.message)]
            result.left_dense = left[0].split(": ")[0].removeprefix("uniform_config ") if left else None
            break
        except RanksearchError as error:
            errors.append(f"{method}: {error}")
    else:
        raise RanksearchError("; ".join(errors))
    result.uniform_method = method
    compressed = apply(model, config, cache=cache)
    result.macs_ratio = count(compressed, inputs).macs / count(model, inputs).macs
    for mode, attribute in ((True, "train_ok"), (False, "eval_ok")):
        output = _output(compressed.train(mode), inputs)
        setattr(result, attribute, output.shape == dense.shape and bool(torch.isfinite(output).all()))
    return compressed.eval(), config, cache


def _save_load(result: ZooResult, model: nn.Module, inputs: object, compressed: tuple, folder: Path) -> None:
    from ranksearch.saving import load, save

    small, config, cache = compressed
    path = save(folder / f"{result.case.library}-{result.case.name}.pt", small, config, model, cache=cache)
    result.save_load_diff = _max_diff(_output(load(path, base_model=model), inputs), _output(small, inputs))


def _onnx(result: ZooResult, inputs: object, compressed: tuple, folder: Path) -> None:
    from ranksearch.onnx_export import OnnxExportError, OnnxExtraMissingError, export_onnx

    path = folder / f"{result.case.library}-{result.case.name}.onnx"
    try:
        exported = export_onnx(compressed[0], inputs, path)
    except OnnxExtraMissingError:
        result.onnx = "onnx extra not installed"
        return
    except OnnxExportError as error:
        result.onnx = f"no: {str(error).splitlines()[0]}"
        return
    checked = "not verified" if exported.max_abs_diff is None else f"max diff {exported.max_abs_diff:.1e}"
    result.onnx = f"ok ({checked}, {exported.seconds:.0f} s)"


def _step(result: ZooResult, name: str, function: Callable[[], object]) -> object:
    """``function()``, or None with the error recorded under ``name``."""
    try:
        return function()
    except Exception as error:
        message = str(error).strip().splitlines()
        result.errors[name] = f"{type(error).__name__}: {message[0] if message else ''}"
        return None


def build_model(case: ZooCase) -> nn.Module:
    """``case``'s model in eval mode, seeded; builder warnings (deprecations of the zoo's own) silenced.

    Weights that the builder sets to zero (torchvision's ViT head) are drawn at random: with them the
    output would be zero whatever the other layers compute, and the full-rank check would prove nothing.
    """
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = case.build().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2 and parameter.is_floating_point() and not parameter.any():
                parameter.normal_(std=0.02)
    return model


def check_model(case: ZooCase, folder: Path, *, onnx: bool = False) -> ZooResult:
    """Run ``case``'s model through the matrix's steps (see the module docs); files go to ``folder``."""
    from ranksearch import FactorCache

    start = time.perf_counter()
    result, cache = ZooResult(case), FactorCache()  # one decomposition per layer serves every step
    model = _step(result, "build", lambda: build_model(case))
    if model is not None:
        torch.manual_seed(1)
        inputs = case.example()
        dense = _step(result, "dense forward", lambda: _output(model, inputs))
        layers = _step(result, "listing", lambda: _listing(result, model))
        if dense is not None and layers is not None:
            _step(result, "full rank", lambda: _full_rank(result, model, inputs, dense, (layers, cache)))
        compressed = None
        if dense is not None:
            compressed = _step(result, "uniform", lambda: _uniform(result, model, inputs, dense, cache))
        if compressed is not None:
            _step(result, "save/load", lambda: _save_load(result, model, inputs, compressed, folder))
            if onnx:
                _step(result, "onnx", lambda: _onnx(result, inputs, compressed, folder))
    result.seconds = time.perf_counter() - start
    return result


def problems(result: ZooResult) -> list[str]:
    """What the test requires of a model and ``result`` fails, in words (empty: every check passes)."""
    found = [f"{step} failed: {error}" for step, error in result.errors.items()]
    if result.compressible == 0:
        found.append(f"no compressible layer (skipped: {result.skip_reasons})")
    diff, scale = result.full_rank_diff, result.output_scale
    if scale == 0.0:
        found.append("the dense output is all zeros: the full-rank check proves nothing")
    if diff is not None and not (math.isfinite(diff) and diff <= full_rank_tolerance(scale)):
        found.append(f"full-rank output differs by {diff:.3g} > {full_rank_tolerance(scale):.3g} (scale {scale:.3g})")
    if result.macs_ratio is not None and result.macs_ratio > MACS_TARGET + MACS_SLACK:
        found.append(f"uniform config at {result.macs_ratio:.4f} of the dense MACs, over {MACS_TARGET}")
    for mode in ("train", "eval"):
        if getattr(result, f"{mode}_ok") is False:
            found.append(f"the 50%-MACs model's {mode}-mode output is not finite or has another shape")
    if result.save_load_diff not in (None, 0.0):
        found.append(f"the loaded model's output differs by {result.save_load_diff:.3g}")
    return found
