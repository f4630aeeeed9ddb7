"""Train a built-in model on a built-in dataset once, and cache the weights with their accuracy.

The ready studies start from a trained model, which this module produces on first use (seconds for
the digits CNN, minutes for ResNet-20 on Fashion-MNIST) and stores under the cache folder, keyed by
everything that determines the result (model, its options, dataset, its options, training settings,
seed). Files are written atomically (temporary file + rename); a file that cannot be read is
retrained with a warning. Training saves a checkpoint after every epoch (``<cache file>.partial``): a run
that is interrupted resumes from its last epoch, and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .errors import RanksearchError

__all__ = ["TrainSettings", "augment_batch", "load_or_train", "train"]


@dataclass(frozen=True)
class TrainSettings:
    """Baseline training: SGD with momentum, one-cycle-like cosine schedule, cross-entropy.

    Attributes:
        epochs: passes over the training set.
        lr: peak learning rate.
        batch_size: training batch size (the study's data loader is used for evaluation only).
        weight_decay: SGD weight decay.
        seed: seeds initialisation and data order.
        augment: random translations by up to 2 pixels (zero padding) and horizontal flips of each training
            image, drawn from ``seed``: what image classifiers need to generalise past a few epochs.
    """

    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 64
    weight_decay: float = 5e-4
    seed: int = 0
    augment: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RanksearchError(f"training setting {name} must be an int >= 1, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise RanksearchError(f"training setting lr must be a finite number > 0, got {self.lr!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not 0 <= wd < math.inf:
            raise RanksearchError(f"training setting weight_decay must be a finite number >= 0, got {wd!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise RanksearchError(f"training setting seed must be an int, got {self.seed!r}")
        if not isinstance(self.augment, bool):
            raise RanksearchError(f"training setting augment must be true or false, got {self.augment!r}")


def evaluate_accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` over ``loader``."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for inputs, targets in loader:
            logits = model(inputs.to(device))
            correct += (logits.argmax(1) == targets.to(device)).sum().item()
            total += len(targets)
    return correct / max(total, 1)


def train(
    model: nn.Module,
    train_set: torch.utils.data.Dataset,
    settings: TrainSettings,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    checkpoint: str | Path | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``train_set``; returns it in eval mode. ``log`` gets a line per epoch.

    With ``checkpoint`` (a file path), the state after each epoch (weights, optimizer, random generators) is
    saved there, and a run that finds one resumes after its epoch: the result is the same as without a stop.
    """
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(train_set, batch_size=settings.batch_size, shuffle=True, generator=generator, drop_last=True)
    if len(loader) == 0:
        raise RanksearchError(
            f"training setting batch_size {settings.batch_size} is larger than the training set "
            f"({len(train_set)} images): lower it"
        )
    model.to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay, nesterov=True
    )
    total = settings.epochs * len(loader)
    step, first_epoch, done_seconds = 0, 0, 0.0
    if checkpoint is not None and Path(checkpoint).exists():
        first_epoch, done_seconds = _resume(Path(checkpoint), model, optimizer, generator, settings, device)
        step = first_epoch * len(loader)
        if log is not None:
            log(f"  resuming after epoch {first_epoch}/{settings.epochs} from {checkpoint}")
    start = time.perf_counter() - done_seconds
    for epoch in range(first_epoch, settings.epochs):
        loss_sum = 0.0
        for inputs, targets in loader:
            warmup = min(1.0, (step + 1) / max(1, total // 10))
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * warmup * 0.5 * (1 + math.cos(math.pi * step / total))
            if settings.augment:
                inputs = augment_batch(inputs, generator)
            loss = _loss(model, inputs.to(device), targets.to(device))
            if not torch.isfinite(loss):
                raise RanksearchError(f"training diverged (loss {loss.item()}) at step {step}: lower the lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            step += 1
        elapsed = time.perf_counter() - start
        if checkpoint is not None and epoch + 1 < settings.epochs:
            state = {"epoch": epoch + 1, "seconds": elapsed, "settings": asdict(settings),
                     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "generator": generator.get_state(), "torch_rng": torch.get_rng_state()}  # fmt: skip
            atomic_torch_save(state, Path(checkpoint))
        if log is not None:
            eta = elapsed / (epoch + 1) * (settings.epochs - epoch - 1)
            mean_loss = loss_sum / len(loader)
            log(f"  epoch {epoch + 1}/{settings.epochs}: loss {mean_loss:.4f} ({elapsed:.0f} s, ETA {eta:.0f} s)")
    return model.eval()


def _resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    settings: TrainSettings,
    device: str,
) -> tuple[int, float]:
    """Load a checkpoint of :func:`train` into ``model``, ``optimizer`` and ``generator``: (epochs done, seconds)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if state["settings"] != asdict(settings):
            raise ValueError("it was written with other training settings")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["epoch"]), float(state["seconds"])
    except Exception as error:  # truncated, foreign or stale: start over
        warnings.warn(f"training checkpoint {path} is not usable ({error}); training from the start", stacklevel=3)
        return 0, 0.0


def augment_batch(images: torch.Tensor, generator: torch.Generator, shift: int = 2) -> torch.Tensor:
    """``images`` (N, C, H, W), each translated by up to ``shift`` pixels (zeros fill in) and flipped
    horizontally with probability 1/2; random numbers from ``generator``."""
    n, _, h, w = images.shape
    padded = F.pad(images, (shift, shift, shift, shift))
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator).tolist()
    moved = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], moved.flip(-1), moved)


def _loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one training batch; a model that does not fit the data is a :class:`RanksearchError`."""
    try:
        logits = model(inputs)
    except Exception as error:
        raise RanksearchError(
            f"the model's forward pass fails on a training batch of shape {tuple(inputs.shape)}: {error}"
        ) from error
    if logits.ndim != 2:
        raise RanksearchError(f"the model must output (batch, classes) logits, got shape {tuple(logits.shape)}")
    classes = logits.shape[1]
    if not targets.is_floating_point() and (targets.min() < 0 or targets.max() >= classes):  # float: soft labels
        raise RanksearchError(
            f"training labels must be class indices in [0, {classes}) for a model with {classes} outputs, "
            f"got values in [{targets.min().item()}, {targets.max().item()}]"
        )
    return F.cross_entropy(logits, targets)


def _key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_torch_save(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_train(
    model: nn.Module,
    identity: dict,
    train_set: torch.utils.data.Dataset,
    val_loader: DataLoader,
    settings: TrainSettings,
    cache_dir: str | Path,
    *,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, float, Path]:
    """Load the trained weights for ``identity`` + ``settings`` from ``cache_dir``, or train and store them.

    Returns the model (eval mode), its validation accuracy and the cache file's path.
    """
    recipe = asdict(settings)
    if not recipe["augment"]:  # keys of models trained before the option existed stay the same
        del recipe["augment"]
    full_identity = {**identity, "train": recipe}
    path = Path(cache_dir) / f"{identity.get('model', 'model')}-{_key(full_identity)}.pt"
    try:  # before training: a cache that cannot be written is an error now, not after the training
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RanksearchError(
            f"cannot create the trained-model cache folder {str(path.parent)!r}: {error.strerror}"
        ) from None
    if path.exists():
        try:
            stored = torch.load(path, map_location=device, weights_only=True)
            model.load_state_dict(stored["state_dict"])
            return model.to(device).eval(), float(stored["accuracy"]), path
        except Exception as error:  # truncated or foreign file: rebuild it
            warnings.warn(f"trained-model cache {path} is unreadable ({error}); retraining", stacklevel=2)
    log(f"training the dense model {identity.get('model')} on {identity.get('data')} for {settings.epochs} epochs ...")
    partial = path.with_name(path.name + ".partial")
    train(model, train_set, settings, device, log=log, checkpoint=partial)
    accuracy = evaluate_accuracy(model, val_loader, torch.device(device))
    atomic_torch_save({"state_dict": model.state_dict(), "accuracy": accuracy, "identity": full_identity}, path)
    partial.unlink(missing_ok=True)
    log(f"trained accuracy {accuracy:.4f}, saved to {path}")
    return model, accuracy, path
