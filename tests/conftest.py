"""Shared fixtures: seeded layers of every geometry the methods must preserve."""

from __future__ import annotations

import pytest
import torch
from torch import nn

# (constructor kwargs, input spatial size): strides, paddings (int, tuple, 'same', 'valid'),
# padding modes, dilation, rectangular and even kernels, with and without bias.
CONV_CASES = {
    "3x3": (dict(in_channels=6, out_channels=8, kernel_size=3, padding=1), (9, 11)),
    "rect-stride-bias": (
        dict(in_channels=8, out_channels=6, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), bias=True),
        (10, 9),
    ),
    "same-dilated-reflect": (
        dict(in_channels=5, out_channels=7, kernel_size=3, padding="same", dilation=2, padding_mode="reflect"),
        (9, 8),
    ),
    "same-even-kernel": (dict(in_channels=4, out_channels=6, kernel_size=(2, 4), padding="same"), (7, 9)),
    "valid-stride2": (dict(in_channels=6, out_channels=6, kernel_size=3, stride=2, padding="valid"), (11, 10)),
    "circular": (dict(in_channels=6, out_channels=5, kernel_size=3, padding=1, padding_mode="circular"), (8, 8)),
    "replicate-dilated": (
        dict(
            in_channels=7,
            out_channels=6,
            kernel_size=(3, 2),
            padding=(2, 1),
            dilation=(2, 1),
            padding_mode="replicate",
            bias=True,
        ),
        (9, 9),
    ),
}
LINEAR_CASES = {
    "linear-bias": (dict(in_features=12, out_features=20), (3, 12)),
    "linear-nobias-3d": (dict(in_features=30, out_features=8, bias=False), (2, 4, 30)),
}


def make_layer(case: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, torch.Tensor]:
    """A seeded layer of the named case and a seeded input for it."""
    torch.manual_seed(seed)
    if case in CONV_CASES:
        kwargs, hw = CONV_CASES[case]
        kwargs = {"bias": False, **kwargs}
        layer = nn.Conv2d(**kwargs, dtype=dtype)
        x = torch.randn(2, kwargs["in_channels"], *hw, dtype=dtype)
    else:
        kwargs, shape = LINEAR_CASES[case]
        layer = nn.Linear(**kwargs, dtype=dtype)
        x = torch.randn(*shape, dtype=dtype)
    if layer.bias is not None:
        with torch.no_grad():
            layer.bias.normal_()
    return layer, x


# The layers here are tiny: one thread is faster and immune to oversubscription on shared machines.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_task():
    """A small CNN trained for a few epochs on 8x8 digits, with its loaders: (model, train, val)."""
    from ranksearch.data import digits, make_loaders
    from ranksearch.models import small_cnn
    from ranksearch.training import TrainSettings, train

    splits = digits(image_size=8)
    train_loader, val_loader = make_loaders(splits, batch_size=32, eval_batch_size=120, seed=0)
    model = train(small_cnn(in_channels=1, num_classes=10, width=4), splits.train, TrainSettings(epochs=3, lr=0.05))
    return model, train_loader, val_loader
