"""Built-in image classification datasets for the rank search, read from local files only.

Nothing here downloads or caches anything on disk. The sources:

- ``digits``: scikit-learn's ``load_digits`` (1,797 8x8 grey images of 10 digits, shipped inside the
  scikit-learn wheel), upscaled bilinearly; a seeded, stratified train/val split.
- ``fashion_mnist``: the standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or ``.gz``), as installed by
  Debian's ``dataset-fashion-mnist`` package in ``/usr/share/datasets/fashion-mnist``. 60,000 train
  and 10,000 val (the test set) 28x28 grey images.
- ``cifar10``: the "python version" of CIFAR-10 (``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch``, optionally inside ``cifar-10-batches-py/``): 50,000 train and 10,000 val 32x32 RGB
  images. These are pickles, and unpickling can run code: only point it at files you trust.

Pixels are scaled to [0, 1], then normalized per channel with the training split's mean and std
(stored in :class:`DataSplits`, so ``raw = image * std + mean``). ``limit_train`` / ``limit_val`` take
a seeded, class-stratified subset that keeps the files' order. :func:`loaders_from` takes a user's data.
"""

from __future__ import annotations

import gzip
import inspect
import os
import pickle
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from .errors import RanksearchError

__all__ = [
    "DataSplits",
    "available_datasets",
    "cifar10",
    "digits",
    "fashion_mnist",
    "load_dataset",
    "loaders_from",
    "make_loaders",
]

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class DataSplits:
    """A classification dataset split for the rank search.

    ``train`` and ``val`` hold (images float32 (N, C, H, W), normalized; labels int64 (N,)).
    ``mean`` / ``std`` (one per channel, on the [0, 1] pixel scale) are what was subtracted and divided
    by: identity (0 and 1) when loaded with ``normalize=False``. ``source`` is the folder read (or the
    scikit-learn loader).
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    source: str


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_image_size(image_size: int) -> None:
    if not _is_int(image_size) or image_size < 8:
        raise RanksearchError(f"image_size must be an integer >= 8, got {image_size!r}")


def _check_limit(name: str, limit: int | None) -> None:
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise RanksearchError(f"{name} must be None or an integer >= 1, got {limit!r}")


def _check_seed_and_normalize(seed: int, normalize: bool) -> None:
    if not _is_int(seed) or seed < 0:
        raise RanksearchError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(normalize, bool):
        raise RanksearchError(f"normalize must be true or false, got {normalize!r}")


def _stratified_pick(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` items drawn per class in proportion to class sizes (largest remainder)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    quota = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: n - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(picked))


def _subset(images: np.ndarray, labels: np.ndarray, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if limit is None or limit >= len(labels):
        return images, labels
    keep = _stratified_pick(labels, limit, seed)
    return images[keep], labels[keep]


def _to_float(images: np.ndarray, scale: float, image_size: int | None = None) -> torch.Tensor:
    """uint8/float (N, C, H, W) -> float32 in [0, 1], bilinearly resized to ``image_size`` if given."""
    x = torch.from_numpy(np.require(images, requirements="W")).to(torch.float32).div_(scale)
    if image_size is not None and image_size != x.shape[-1]:
        shrink = image_size < x.shape[-1]
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=shrink)
    return x


def _build(
    name: str,
    source: str,
    train: tuple[torch.Tensor, np.ndarray],
    val: tuple[torch.Tensor, np.ndarray],
    class_names: tuple[str, ...],
    normalize: bool,
) -> DataSplits:
    """Normalize both splits in place with the train split's per-channel statistics and pack them."""
    (x_train, y_train), (x_val, y_val) = train, val
    for split, labels in (("training", y_train), ("validation", y_val)):
        if len(labels) == 0:
            raise RanksearchError(f"{name}: the {split} split is empty (no images in {source})")
    channels = x_train.shape[1]
    mean, std = torch.zeros(channels), torch.ones(channels)
    if normalize:  # two passes, in place; float64 sums over chunks (accurate, no full-size temporary)
        chunks = x_train.split(1024)
        mean = (sum(c.double().sum(dim=(0, 2, 3)) for c in chunks) / (x_train.numel() / channels)).float()
        x_train.sub_(mean.view(1, -1, 1, 1))
        var = sum(c.double().square().sum(dim=(0, 2, 3)) for c in chunks) / (x_train.numel() / channels)
        std = torch.where(var > 0, var.sqrt(), 1.0).float()  # a constant channel is only centred
        x_train.div_(std.view(1, -1, 1, 1))
        x_val.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    return DataSplits(
        name=name,
        train=TensorDataset(x_train, torch.from_numpy(y_train.astype(np.int64))),
        val=TensorDataset(x_val, torch.from_numpy(y_val.astype(np.int64))),
        num_classes=len(class_names),
        input_shape=tuple(x_train.shape[1:]),
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
        class_names=class_names,
        source=source,
    )


def digits(image_size: int = 32, val_fraction: float = 0.2, seed: int = 0, normalize: bool = True) -> DataSplits:
    """scikit-learn's 8x8 digits, upscaled: train/val images (N, 1, image_size, image_size), 10 classes.

    The val split takes ``round(1797 * val_fraction)`` images, stratified by class and drawn with ``seed``.
    """
    _check_image_size(image_size)
    _check_seed_and_normalize(seed, normalize)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise RanksearchError(f"val_fraction must be strictly between 0 and 1, got {val_fraction!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RanksearchError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    images, labels = bunch.images[:, None], bunch.target
    n_val = min(max(round(len(labels) * val_fraction), 1), len(labels) - 1)
    val_idx = _stratified_pick(labels, n_val, seed)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    train = (_to_float(images[train_idx], 16.0, image_size), labels[train_idx])
    val = (_to_float(images[val_idx], 16.0, image_size), labels[val_idx])
    names = tuple(str(c) for c in range(10))
    return _build("digits", "sklearn.datasets.load_digits", train, val, names, normalize)


def _check_folder(root: str | Path, what: str, hint: str) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        raise RanksearchError(f"{what} root must be a folder path, got {root!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise RanksearchError(f"{what} folder {root} {problem}; {hint}")
    return root


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise RanksearchError(f"{path} is not a valid gzip file (truncated or corrupt: {e})") from None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (magic 0x0801 labels, 0x0803 images) as a uint8 array."""
    raw = _read_bytes(path)
    header = 4 + 4 * ndim
    expected = 0x0800 + ndim
    if len(raw) < header:
        raise RanksearchError(f"{path} is not a valid IDX file: truncated header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected:
        raise RanksearchError(
            f"{path} is not a valid IDX file: magic number {magic:#010x}, expected {expected:#010x} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})"
        )
    dims = [int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4)]
    size = int(np.prod(dims))
    if len(raw) - header != size:
        state = "truncated" if len(raw) - header < size else "longer than its header says"
        raise RanksearchError(
            f"{path} is not a valid IDX file: {state} (header {'x'.join(map(str, dims))} = {size} bytes "
            f"of data, found {len(raw) - header})"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _read_idx_pair(root: Path, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    paths = []
    for kind, ndim in (("images", 3), ("labels", 1)):
        base = f"{split}-{kind}-idx{ndim}-ubyte"
        found = [p for p in (root / base, root / f"{base}.gz") if p.is_file()]
        if not found:
            raise RanksearchError(f"Fashion-MNIST file {base} (or {base}.gz) not found in {root}")
        paths.append(found[0])
    images, labels = _read_idx(paths[0], 3), _read_idx(paths[1], 1)
    if len(images) != len(labels):
        raise RanksearchError(f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels")
    if labels.size and labels.max() >= num_classes:
        raise RanksearchError(f"{paths[1]} has label {labels.max()}, expected labels in [0, {num_classes})")
    return images[:, None], labels


def fashion_mnist(
    root: str | Path = FASHION_MNIST_ROOT,
    image_size: int = 28,
    limit_train: int | None = None,
    limit_val: int | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> DataSplits:
    """Fashion-MNIST from local IDX files: images (N, 1, image_size, image_size), 10 classes.

    val is the 10k test set. ``limit_*`` keep a seeded, stratified subset in file order.
    """
    _check_image_size(image_size)
    _check_limit("limit_train", limit_train)
    _check_limit("limit_val", limit_val)
    _check_seed_and_normalize(seed, normalize)
    hint = "install it with `apt-get install dataset-fashion-mnist` or pass root= a folder holding the IDX files"
    root = _check_folder(root, "Fashion-MNIST", hint)
    splits = []
    for split, limit in (("train", limit_train), ("t10k", limit_val)):
        images, labels = _subset(*_read_idx_pair(root, split, 10), limit, seed)
        splits.append((_to_float(images, 255.0, image_size), labels))
    return _build("fashion_mnist", str(root), splits[0], splits[1], FASHION_CLASSES, normalize)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise RanksearchError(
            f"CIFAR-10 file {path.name} not found in {path.parent} (expected data_batch_1..5 and test_batch, "
            "there or in a cifar-10-batches-py/ subfolder)"
        )
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as e:
        raise RanksearchError(f"{path} is not a CIFAR-10 python batch (cannot unpickle it: {e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise RanksearchError(
            f"{path} is not a CIFAR-10 python batch: expected a dict with b'data' and b'labels', got {keys}"
        )
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    shape_ok = data.ndim == 2 and data.shape[1] == 3072 and labels.shape == (len(data),)
    if data.dtype != np.uint8 or not shape_ok or not np.issubdtype(labels.dtype, np.integer):
        raise RanksearchError(
            f"{path} is not a CIFAR-10 python batch: b'data' is {data.dtype} {data.shape} (expected uint8 (N, 3072)) "
            f"and b'labels' is {labels.dtype} {labels.shape} (expected integers ({len(data)},))"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise RanksearchError(f"{path} has labels outside [0, 10): {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def cifar10(
    root: str | Path,
    limit_train: int | None = None,
    limit_val: int | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> DataSplits:
    """CIFAR-10 (python version) from a local folder: images (N, 3, 32, 32), 10 classes; val = test_batch.

    ``root`` holds the batch files or a ``cifar-10-batches-py/`` folder with them. Never downloads.
    ``limit_*`` keep a seeded, stratified subset in file order.
    """
    _check_limit("limit_train", limit_train)
    _check_limit("limit_val", limit_val)
    _check_seed_and_normalize(seed, normalize)
    hint = "extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) there or pass root="
    root = _check_folder(root, "CIFAR-10", hint)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    batches = [_read_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    train = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    val = _read_cifar_batch(root / "test_batch")
    splits = []
    for (images, labels), limit in ((train, limit_train), (val, limit_val)):
        images, labels = _subset(images, labels, limit, seed)
        splits.append((_to_float(images, 255.0), labels))
    return _build("cifar10", str(root), splits[0], splits[1], CIFAR10_CLASSES, normalize)


_DATASETS: dict[str, Callable[..., DataSplits]] = {"digits": digits, "fashion_mnist": fashion_mnist, "cifar10": cifar10}


def available_datasets() -> list[str]:
    """Names :func:`load_dataset` accepts."""
    return list(_DATASETS)


def load_dataset(name: str, **options: object) -> DataSplits:
    """Load a built-in dataset by name (see :func:`available_datasets`), passing ``options`` to its loader."""
    loader = _DATASETS.get(str(name).replace("-", "_").lower())
    if loader is None:
        raise RanksearchError(f"unknown dataset {name!r}; built-in datasets: {', '.join(_DATASETS)}")
    accepted = list(inspect.signature(loader).parameters)
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise RanksearchError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for dataset "
            f"{name!r}; it accepts: {', '.join(accepted)}"
        )
    return loader(**options)


def make_loaders(
    splits: DataSplits, batch_size: int = 128, eval_batch_size: int | None = None, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """(train loader, val loader): train shuffled by a ``seed``-ed generator (the same order for a seed, another
    each epoch), val in order; no worker processes. ``eval_batch_size`` defaults to ``batch_size``."""
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if not isinstance(value, int) or value < 1:
            raise RanksearchError(f"{key} must be an integer >= 1, got {value!r}")
    train = _loader(splits.train, "train", batch_size, seed, shuffle=True)
    return train, _loader(splits.val, "val", eval_batch_size, seed)


def _loader(data: object, split: str, batch_size: int, seed: int, shuffle: bool = False) -> Iterable:
    """``data`` if it is a DataLoader, else a loader of the Dataset it is (shuffled by a ``seed``-ed generator)."""
    if isinstance(data, DataLoader):
        return data
    if not isinstance(data, Dataset):
        raise RanksearchError(f"a {type(data).__name__} as the {split} split: give a torch DataLoader or Dataset")
    shuffle = shuffle and not isinstance(data, IterableDataset)  # an iterable dataset keeps its own order
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)


def loaders_from(data: object, batch_size: int, eval_batch_size: int, seed: int = 0) -> tuple[Iterable, Iterable]:
    """(train, val) loaders from what a user's data factory (``[data] factory``) returns.

    ``data`` is ``(train, val)``, ``{"train": train, "val": val}`` or a :class:`DataSplits`; each split a ``DataLoader``
    (used as it is) or a ``Dataset`` (batched as :func:`make_loaders` does: train shuffled by a ``seed``-ed generator).
    """
    if isinstance(data, DataSplits):
        return make_loaders(data, batch_size, eval_batch_size, seed)
    if isinstance(data, Mapping) and set(data) == {"train", "val"}:
        data = (data["train"], data["val"])
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        what = type(data).__name__
        if isinstance(data, (Mapping, tuple, list)):
            what += f" with keys {sorted(map(str, data))}" if isinstance(data, Mapping) else f" of {len(data)} items"
        raise RanksearchError(f"a {what}: return (train, val) DataLoaders or Datasets, or a dict of 'train' and 'val'")
    return _loader(data[0], "train", batch_size, seed, shuffle=True), _loader(data[1], "val", eval_batch_size, seed)
