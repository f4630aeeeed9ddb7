"""Built-in models for the demo, the ready studies, tests and benchmarks (randomly initialised).

- ``small_cnn``: three 3x3 conv blocks and a two-layer head (0.62 M params, 10 M MACs at 32x32).
- ``resnet20``: the CIFAR ResNet-20 of He et al. (2016), option-A (parameter-free) shortcuts,
  widths 16/32/64 (0.27 M params).
- ``resnet18_cifar``: ResNet-18 widths 64-512 with a 3x3 stem for 32x32 inputs (11.2 M params).

Models of the zoos, when their package is installed (the ``zoo`` extra), built without downloading anything
(:func:`zoo_model`): torchvision and timm architectures without pretrained weights, transformers models from a
local folder or ``config.json``. :func:`load_weights` loads a state dict file into any of them.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from difflib import get_close_matches
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import RanksearchError

__all__ = [
    "ZOO_INSTALL",
    "available_models",
    "build_model",
    "load_weights",
    "resnet18_cifar",
    "resnet20",
    "small_cnn",
    "zoo_model",
]

ZOO_INSTALL = "pip install -c constraints-zoo.txt -e '.[zoo]' (docs/ZOO.md: with a CPU torch)"
"""How to install the zoo packages (torchvision, timm, transformers): said by every error that misses one."""


def _conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> nn.Module:
    """Conv(w) - pool - Conv(2w) - pool - Conv(4w) - pool to 4x4 - Linear(256) - Linear(classes).

    About 10 M MACs per 32x32 image at ``width=32``, most of them in the two inner 3x3 convs.
    """
    return nn.Sequential(
        _conv_bn(in_channels, width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        _conv_bn(width, 2 * width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        _conv_bn(2 * width, 4 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(4 * width * 16, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    )


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "pad":
            self.shortcut = _PadShortcut(out_channels - in_channels)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: a 3x3 stem, stages of basic blocks, global pooling, one Linear."""

    def __init__(
        self, widths: tuple[int, ...], blocks: int | tuple[int, ...], in_channels: int, num_classes: int, shortcut: str
    ) -> None:
        super().__init__()
        per_stage = (blocks,) * len(widths) if isinstance(blocks, int) else blocks
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, channels = [], widths[0]
        for i, (width, count) in enumerate(zip(widths, per_stage, strict=True)):
            layers = []
            for j in range(count):
                layers.append(BasicBlock(channels, width, 2 if (i > 0 and j == 0) else 1, shortcut))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet20(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNet-20 for 32x32 inputs (3 stages x 3 blocks, widths 16/32/64)."""
    return ResNet((16, 32, 64), 3, in_channels, num_classes, shortcut="pad")


def resnet18_cifar(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNet-18 widths (64-512, 2 blocks per stage) with a 3x3 stem for 32x32 inputs."""
    return ResNet((64, 128, 256, 512), 2, in_channels, num_classes, shortcut="conv")


_MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": small_cnn,
    "resnet20": resnet20,
    "resnet18_cifar": resnet18_cifar,
}


_SIZES = ("in_channels", "num_classes", "width")
"""The models' size options: each a positive int (torch would fail on zero or negative sizes, or warn)."""


def available_models() -> tuple[str, ...]:
    """Names accepted by :func:`build_model`."""
    return tuple(_MODELS)


def build_model(name: str, **kwargs: object) -> nn.Module:
    """A built-in model by name, e.g. ``build_model("resnet20", in_channels=1)``."""
    try:
        factory = _MODELS[name]
    except KeyError:
        raise RanksearchError(f"unknown model {name!r}; built-in models: {', '.join(_MODELS)}") from None
    accepted = inspect.signature(factory).parameters
    for key in (k for k in _SIZES if k in kwargs and k in accepted):  # unknown options: the factory's TypeError
        value = kwargs[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RanksearchError(f"model {name!r}: {key} must be an int >= 1, got {value!r}")
    return factory(**kwargs)


TRANSFORMERS_TASKS = {
    None: "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "image-classification": "AutoModelForImageClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "masked-lm": "AutoModelForMaskedLM",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
}
"""``options.task`` of a transformers model -> its ``transformers`` class (default: the plain ``AutoModel``)."""
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                         "pytorch_model.bin.index.json")  # fmt: skip


def _import(module: str, package: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if error.name in (package, module):  # not installed (a module missing inside it is another failure)
            raise RanksearchError(f"needs the {package} package, which is not installed: {ZOO_INSTALL}") from None
        raise RanksearchError(f"importing {package} failed: {error}") from None


def _unknown(source: str, name: str, names: list[str]) -> RanksearchError:
    close = get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return RanksearchError(f"{source} has no model {name!r}{hint}")


def _torchvision(name: str, options: dict[str, object]) -> nn.Module:
    models = _import("torchvision.models", "torchvision")
    if "weights" in options or "pretrained" in options:
        raise RanksearchError("options.weights would download them: give a local state dict as [model] weights")
    if name not in models.list_models():
        raise _unknown("torchvision", name, list(models.list_models()))
    if options.get("weights_backbone") is not None:
        raise RanksearchError("options.weights_backbone would download them: give [model] weights instead")
    if "weights_backbone" in inspect.signature(models.get_model_builder(name)).parameters:
        options["weights_backbone"] = None  # detection models download a backbone by default
    return models.get_model(name, weights=None, **options)


def _timm(name: str, options: dict[str, object]) -> nn.Module:
    timm = _import("timm", "timm")
    if options.get("pretrained") or ":" in name:  # "hf-hub:..." names download too
        raise RanksearchError("pretrained weights would be downloaded: give a local state dict as [model] weights")
    if not timm.is_model(name):
        raise _unknown("timm", name, list(timm.list_models()))
    return timm.create_model(name, **{**options, "pretrained": False})


def _transformers(location: str, options: dict[str, object]) -> nn.Module:
    transformers = _import("transformers", "transformers")
    task = options.pop("task", None)
    if task not in TRANSFORMERS_TASKS:
        tasks = ", ".join(t for t in TRANSFORMERS_TASKS if t)
        raise RanksearchError(f"options.task {task!r} is not one of {tasks} (or none: AutoModel)")
    cls = getattr(transformers, TRANSFORMERS_TASKS[task])
    path = Path(location).expanduser()
    if not path.exists() or (path.is_dir() and not (path / "config.json").is_file()):
        what = "does not exist" if not path.exists() else "holds no config.json"
        raise RanksearchError(
            f"{location!r} {what}: give a local folder written by save_pretrained, or a config.json "
            "(nothing is downloaded)"
        )
    if path.is_dir() and any((path / name).is_file() for name in _TRANSFORMERS_WEIGHTS):
        return cls.from_pretrained(str(path), local_files_only=True, **options)
    config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, **options)
    return cls.from_config(config)


_ZOOS: dict[str, Callable[[str, dict[str, object]], nn.Module]] = {
    "torchvision": _torchvision,
    "timm": _timm,
    "transformers": _transformers,
}


def zoo_model(source: str, name: str, options: Mapping[str, object] | None = None) -> nn.Module:
    """A model of a zoo package, built without downloading anything.

    Args:
        source: ``"torchvision"`` (``get_model(name, weights=None)``), ``"timm"`` (``create_model(name,
            pretrained=False)``) or ``"transformers"`` (``name`` a local folder with weights:
            ``from_pretrained(..., local_files_only=True)``; a folder or ``config.json`` without: ``from_config``).
        name: the model's name, or the transformers folder or config file.
        options: keyword arguments of the builder; for transformers, config overrides and ``task`` (a key of
            :data:`TRANSFORMERS_TASKS`).

    Raises:
        RanksearchError: the package is missing (saying how to install it), the name is unknown, a download
            was asked for, or the builder failed.
    """
    if source not in _ZOOS:
        raise RanksearchError(f"unknown model zoo {source!r}; zoos: {', '.join(_ZOOS)}")
    try:
        model = _ZOOS[source](name, dict(options or {}))
    except RanksearchError:
        raise
    except Exception as error:
        raise RanksearchError(f"building {name!r} failed: {type(error).__name__}: {error}") from error
    if not isinstance(model, nn.Module):
        raise RanksearchError(f"building {name!r} gave a {type(model).__name__}, not a torch.nn.Module")
    return model


def _state_dict(loaded: object) -> Mapping[str, torch.Tensor] | None:
    """The state dict in a loaded file: the file itself, or its ``state_dict`` / ``model_state_dict`` / ``model``."""
    if not isinstance(loaded, Mapping):
        return None
    for candidate in (loaded, loaded.get("state_dict"), loaded.get("model_state_dict"), loaded.get("model")):
        if isinstance(candidate, Mapping) and candidate and all(torch.is_tensor(v) for v in candidate.values()):
            return candidate
    return None


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the state dict saved at ``path`` into ``model`` (strictly: every tensor, the same shapes).

    The file is read with ``torch.load(path, weights_only=True)`` (tensors and plain containers only); it holds
    the state dict itself, or a checkpoint dict with it under ``state_dict``, ``model_state_dict`` or ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise RanksearchError(f"{str(path)!r} {'is a folder' if path.is_dir() else 'does not exist'}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RanksearchError(
            f"{str(path)!r} cannot be read as a state dict with torch.load(weights_only=True): {first} (a whole "
            "module saved with torch.save(model, path) goes in [model] path)"
        ) from None
    state = _state_dict(loaded)
    if state is None:
        raise RanksearchError(
            f"{str(path)!r} holds a {type(loaded).__name__}, not a state dict (save model.state_dict())"
        )
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that differ
        raise RanksearchError(f"{str(path)!r} does not fit the model: {' '.join(str(error).split())}") from None
    mismatched = (("missing", result.missing_keys), ("unexpected", result.unexpected_keys))
    if any(keys for _, keys in mismatched):
        parts = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                 for what, keys in mismatched if keys]  # fmt: skip
        raise RanksearchError(f"{str(path)!r} does not fit the model: {'; '.join(parts)}")
    return model
