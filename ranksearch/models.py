"""Built-in models for the demo, the ready studies, tests and benchmarks (randomly initialised).

- ``small_cnn``: three 3x3 conv blocks and a two-layer head (0.62 M params, 10 M MACs at 32x32).
- ``resnet20``: the CIFAR ResNet-20 of He et al. (2016), option-A (parameter-free) shortcuts,
  widths 16/32/64 (0.27 M params).
- ``resnet18_cifar``: ResNet-18 widths 64-512 with a 3x3 stem for 32x32 inputs (11.2 M params).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import RanksearchError

__all__ = ["available_models", "build_model", "resnet18_cifar", "resnet20", "small_cnn"]


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
