"""Your own model, data and metric, as a study file names them (``own_model.toml`` beside this file).

ranksearch calls these by their ``"own_model:function"`` names, with the study file's folder importable, in the
main process and in every worker. Nothing here downloads anything: the data are scikit-learn's 8x8 digits.

- ``digits``: the data factory. Returns ``{"train": Dataset, "val": Dataset}``; ranksearch batches them with the
  ``[data]`` batch sizes (a factory may also return two DataLoaders, or a ``(train, val)`` pair).
- ``tiny_cnn``: the model factory. Returns the trained model: it loads ``checkpoint`` when the file exists,
  else trains for ``epochs`` (a few seconds) and saves it there, so every worker and every later run starts
  from the same weights.
- ``balanced_accuracy``: the metric (higher is better), ``metric(logits, targets) -> float``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def digits(val_fraction: float = 0.2, seed: int = 0) -> dict[str, TensorDataset]:
    """scikit-learn's digits: images (N, 1, 8, 8) standardized with the training split's statistics, labels 0-9."""
    bunch = load_digits()
    images = bunch.images[:, None].astype(np.float32) / 16.0
    x_train, x_val, y_train, y_val = train_test_split(
        images, bunch.target, test_size=val_fraction, stratify=bunch.target, random_state=seed
    )
    mean, std = x_train.mean(), x_train.std()
    return {
        "train": TensorDataset(torch.from_numpy((x_train - mean) / std), torch.from_numpy(y_train).long()),
        "val": TensorDataset(torch.from_numpy((x_val - mean) / std), torch.from_numpy(y_val).long()),
    }


def tiny_cnn(width: int = 16, checkpoint: str | None = None, epochs: int = 8, seed: int = 0) -> nn.Module:
    """Two 3x3 conv blocks and a two-layer head for 8x8 digits, trained (or loaded from ``checkpoint``)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 2w, 4, 4)
        nn.Flatten(),
        nn.Linear(2 * width * 16, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    if checkpoint is not None and Path(checkpoint).is_file():
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        return model.eval()
    _train(model, digits(seed=seed)["train"], epochs, seed)
    if checkpoint is not None:  # written whole or not at all
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), f"{checkpoint}.tmp")
        os.replace(f"{checkpoint}.tmp", checkpoint)
    return model.eval()


def _train(model: nn.Module, train: TensorDataset, epochs: int, seed: int) -> None:
    """SGD with momentum and cosine decay, cross-entropy, a seeded data order."""
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for inputs, targets in loader:
            loss = F.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


def balanced_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The mean over classes of the share of each class predicted right (classes absent from the batch skipped)."""
    predicted = logits.argmax(dim=1)  # (B,)
    recalls = [(predicted[targets == c] == c).float().mean() for c in targets.unique()]
    return torch.stack(recalls).mean().item()
