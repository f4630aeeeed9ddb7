"""Built-in datasets: digits, Fashion-MNIST and CIFAR-10 from tiny files in the real formats, errors, loaders."""

from __future__ import annotations

import gzip
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ranksearch.data import (
    FASHION_MNIST_ROOT,
    DataSplits,
    available_datasets,
    cifar10,
    digits,
    fashion_mnist,
    load_dataset,
    make_loaders,
)
from ranksearch.errors import RanksearchError


def raw_pixels(splits: DataSplits, part: str) -> torch.Tensor:
    """Undo the normalization and the /255 scaling: the file's uint8 pixels."""
    images = getattr(splits, part).tensors[0]
    mean, std = torch.tensor(splits.mean).view(1, -1, 1, 1), torch.tensor(splits.std).view(1, -1, 1, 1)
    return (images * std + mean).mul(255).round().to(torch.uint8)


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, cut: int = 0) -> None:
    """An IDX file of unsigned bytes (gzip-compressed when the name ends in .gz); ``cut`` drops trailing bytes."""
    magic = 0x0800 + array.ndim if magic is None else magic
    data = magic.to_bytes(4, "big") + np.asarray(array.shape, ">u4").tobytes() + array.astype(np.uint8).tobytes()
    data = data[: len(data) - cut]
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def make_fashion(root: Path, gz: bool, n_train: int = 30, n_val: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_val, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.permutation(np.arange(n_val) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(root / (name + ".gz" if gz else name), array)
    return arrays


def make_cifar(root: Path, n_per_batch: int = 10) -> list[tuple[np.ndarray, list[int]]]:
    """Six batches pickled with the real key names; returns (data, labels) of data_batch_1..5, test_batch."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    batches = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.permutation(np.arange(n_per_batch) % 10)]
        batch = {
            b"batch_label": f"batch {i}".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n_per_batch)],
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
        batches.append((data, labels))
    return batches


# --- digits ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_splits() -> DataSplits:
    return digits()


def test_digits_shapes_labels_and_split_sizes(digit_splits):
    (x_train, y_train), x_val = digit_splits.train.tensors, digit_splits.val.tensors[0]
    assert x_train.shape[1:] == x_val.shape[1:] == (1, 32, 32) and digit_splits.input_shape == (1, 32, 32)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert len(x_train) + len(x_val) == 1797 and len(x_val) == round(0.2 * 1797)
    assert int(y_train.min()) == 0 and int(y_train.max()) == 9 and digit_splits.num_classes == 10


def test_digits_split_is_stratified_and_seeded(digit_splits):
    val_counts = torch.bincount(digit_splits.val.tensors[1], minlength=10)
    assert (val_counts >= 35).all() and (val_counts <= 37).all()  # every class, ~20% of ~180 each
    again, other = digits(seed=0), digits(seed=1)
    assert torch.equal(again.val.tensors[0], digit_splits.val.tensors[0])
    assert torch.equal(again.train.tensors[1], digit_splits.train.tensors[1])
    assert not torch.equal(other.val.tensors[0], digit_splits.val.tensors[0])


def test_digits_train_split_is_normalized(digit_splits):
    x = digit_splits.train.tensors[0].double()
    assert abs(x.mean().item()) < 1e-5 and abs(x.std(correction=0).item() - 1) < 1e-5
    assert 0.2 < digit_splits.mean[0] < 0.4 and 0.2 < digit_splits.std[0] < 0.4  # [0, 1] pixel scale


def test_digits_at_native_size_are_the_sklearn_images():
    from sklearn.datasets import load_digits

    splits = digits(image_size=8, val_fraction=0.5, normalize=False)
    assert splits.mean == (0.0,) and splits.std == (1.0,)
    ours = torch.cat([splits.train.tensors[0], splits.val.tensors[0]]).mul(16).round().reshape(-1, 64)
    theirs = torch.from_numpy(load_digits().data).float()
    assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, theirs.tolist()))


# --- Fashion-MNIST ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_fashion_mnist_idx_files_round_trip(tmp_path, gz):
    arrays = make_fashion(tmp_path, gz)
    splits = fashion_mnist(tmp_path)
    assert splits.input_shape == (1, 28, 28) and len(splits.train) == 30 and len(splits.val) == 20
    assert splits.class_names[0] == "T-shirt/top" and splits.source == str(tmp_path)
    assert torch.equal(raw_pixels(splits, "train")[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(raw_pixels(splits, "val")[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert splits.train.tensors[1].tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert splits.val.tensors[1].tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    raw = fashion_mnist(tmp_path, normalize=False)
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255
    assert torch.equal(raw.val.tensors[0][:, 0], expected)  # exactly pixel / 255


def test_fashion_mnist_limits_take_a_seeded_stratified_subset_in_file_order(tmp_path):
    arrays = make_fashion(tmp_path, gz=True, n_train=100, n_val=50)
    splits = fashion_mnist(tmp_path, limit_train=40, limit_val=1000, image_size=16)
    y = splits.train.tensors[1]
    assert len(y) == 40 and torch.bincount(y, minlength=10).tolist() == [4] * 10
    assert len(splits.val) == 50 and splits.train.tensors[0].shape[1:] == (1, 16, 16)
    raw = fashion_mnist(tmp_path, limit_train=40, normalize=False)
    originals = {arr.tobytes(): i for i, arr in enumerate(arrays["train-images-idx3-ubyte"])}
    rows = [originals[img.mul(255).round().to(torch.uint8).numpy().tobytes()] for img in raw.train.tensors[0][:, 0]]
    assert rows == sorted(rows) and raw.train.tensors[1].tolist() == arrays["train-labels-idx1-ubyte"][rows].tolist()
    same, other = fashion_mnist(tmp_path, limit_train=40), fashion_mnist(tmp_path, limit_train=40, seed=1)
    assert torch.equal(same.train.tensors[0], fashion_mnist(tmp_path, limit_train=40).train.tensors[0])
    assert not torch.equal(same.train.tensors[0], other.train.tensors[0])


@pytest.mark.skipif(not FASHION_MNIST_ROOT.is_dir(), reason=f"{FASHION_MNIST_ROOT} absent (apt dataset-fashion-mnist)")
def test_real_fashion_mnist_with_limits():
    splits = fashion_mnist(limit_train=500, limit_val=200)
    assert len(splits.train) == 500 and len(splits.val) == 200 and splits.input_shape == (1, 28, 28)
    assert torch.bincount(splits.train.tensors[1], minlength=10).tolist() == [50] * 10
    assert torch.bincount(splits.val.tensors[1], minlength=10).tolist() == [20] * 10
    assert abs(splits.mean[0] - 0.286) < 0.02 and abs(splits.std[0] - 0.353) < 0.02  # full-set values 0.2860 / 0.3530


# --- CIFAR-10 --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subfolder", [False, True], ids=["flat", "cifar-10-batches-py"])
def test_cifar10_batches_round_trip(tmp_path, subfolder):
    batches = make_cifar(tmp_path / "cifar-10-batches-py" if subfolder else tmp_path)
    splits = cifar10(tmp_path)
    assert splits.input_shape == (3, 32, 32) and len(splits.train) == 50 and len(splits.val) == 10
    assert len(splits.mean) == len(splits.std) == 3 and splits.class_names[-1] == "truck"
    train_data = np.concatenate([b[0] for b in batches[:5]])
    assert torch.equal(raw_pixels(splits, "train").reshape(50, 3072), torch.from_numpy(train_data))
    assert torch.equal(raw_pixels(splits, "val")[3, 1], torch.from_numpy(batches[5][0][3, 1024:2048].reshape(32, 32)))
    assert splits.train.tensors[1].tolist() == [v for b in batches[:5] for v in b[1]]
    assert splits.val.tensors[1].tolist() == batches[5][1]
    x = splits.train.tensors[0].double()
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-5  # per channel
    assert (x.std(dim=(0, 2, 3), correction=0) - 1).abs().max() < 1e-5


def test_cifar10_limits(tmp_path):
    make_cifar(tmp_path, n_per_batch=20)
    splits = cifar10(tmp_path, limit_train=30, limit_val=10)
    assert torch.bincount(splits.train.tensors[1], minlength=10).tolist() == [3] * 10
    assert torch.bincount(splits.val.tensors[1], minlength=10).tolist() == [1] * 10


# --- registry and loaders --------------------------------------------------------------------------------------------


def test_load_dataset_by_name(tmp_path):
    assert available_datasets() == ["digits", "fashion_mnist", "cifar10"]
    assert load_dataset("digits", image_size=16, val_fraction=0.1).input_shape == (1, 16, 16)
    make_fashion(tmp_path, gz=False)
    assert load_dataset("fashion-mnist", root=tmp_path).name == "fashion_mnist"


def test_make_loaders_order_is_seeded_and_batches_have_the_right_shape(digit_splits):
    def first_epoch(seed: int) -> torch.Tensor:
        train, _ = make_loaders(digit_splits, batch_size=100, seed=seed)
        return torch.cat([y for _, y in train])

    assert torch.equal(first_epoch(0), first_epoch(0)) and not torch.equal(first_epoch(0), first_epoch(1))
    assert sorted(first_epoch(0).tolist()) == sorted(digit_splits.train.tensors[1].tolist())
    train, val = make_loaders(digit_splits, batch_size=100, eval_batch_size=256)
    x, y = next(iter(train))
    assert x.shape == (100, 1, 32, 32) and y.shape == (100,)
    xv, yv = next(iter(val))
    assert xv.shape == (256, 1, 32, 32) and torch.equal(yv, digit_splits.val.tensors[1][:256])  # in order
    assert [len(y) for _, y in val] == [256, 103]


# --- bad input -------------------------------------------------------------------------------------------------------


def test_fashion_mnist_missing_folder_gives_the_install_hint(tmp_path):
    with pytest.raises(RanksearchError, match=r"nowhere does not exist.*apt-get install dataset-fashion-mnist"):
        fashion_mnist(tmp_path / "nowhere")


def test_fashion_mnist_missing_file_is_named(tmp_path):
    make_fashion(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(RanksearchError, match=r"t10k-labels-idx1-ubyte \(or t10k-labels-idx1-ubyte.gz\) not found in"):
        fashion_mnist(tmp_path)


def test_idx_wrong_magic_number(tmp_path):
    make_fashion(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(30, np.uint8), magic=0x0803)
    with pytest.raises(
        RanksearchError, match=r"train-labels-idx1-ubyte is not a valid IDX file: magic number 0x00000803"
    ):
        fashion_mnist(tmp_path)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_truncated_data(tmp_path, gz):
    make_fashion(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    write_idx(tmp_path / name, np.zeros((30, 28, 28), np.uint8), cut=100)
    with pytest.raises(
        RanksearchError, match=rf"{name} is not a valid IDX file: truncated .* 23520 bytes .* found 23420"
    ):
        fashion_mnist(tmp_path)


def test_idx_truncated_gzip_stream(tmp_path):
    make_fashion(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(RanksearchError, match=r"t10k-images-idx3-ubyte.gz is not a valid gzip file"):
        fashion_mnist(tmp_path)


def test_idx_image_and_label_counts_must_match(tmp_path):
    make_fashion(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(RanksearchError, match=r"holds 20 images but .*t10k-labels-idx1-ubyte holds 19 labels"):
        fashion_mnist(tmp_path)


def test_cifar10_missing_folder_and_file(tmp_path):
    with pytest.raises(RanksearchError, match=r"folder .*absent does not exist; extract cifar-10-python.tar.gz"):
        cifar10(tmp_path / "absent")
    make_cifar(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(
        RanksearchError,
        match=rf"CIFAR-10 file data_batch_4 not found in {re.escape(str(tmp_path))} \(expected data_batch_1..5",
    ):
        cifar10(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a pickle at all", r"test_batch is not a CIFAR-10 python batch \(cannot unpickle it"),
        (pickle.dumps([1, 2, 3]), r"test_batch is not a CIFAR-10 python batch: expected a dict .* got list"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"b'data' is uint8 \(2, 100\)"),
    ],
    ids=["garbage", "list", "wrong-shape"],
)
def test_cifar10_pickle_that_is_not_a_batch(tmp_path, content, message):
    make_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(RanksearchError, match=message):
        cifar10(tmp_path)


@pytest.mark.parametrize("image_size", [7, 0])
def test_image_size_below_8(tmp_path, image_size):
    with pytest.raises(RanksearchError, match=rf"image_size must be an integer >= 8, got {image_size}"):
        digits(image_size=image_size)
    with pytest.raises(RanksearchError, match=r"image_size must be an integer >= 8"):
        fashion_mnist(tmp_path, image_size=image_size)


@pytest.mark.parametrize("val_fraction", [0, 1, 1.5, -0.1])
def test_val_fraction_outside_0_1(val_fraction):
    with pytest.raises(RanksearchError, match=rf"val_fraction must be strictly between 0 and 1, got {val_fraction}"):
        digits(val_fraction=val_fraction)


@pytest.mark.parametrize("loader", [fashion_mnist, cifar10])
@pytest.mark.parametrize("key, value", [("limit_train", 0), ("limit_val", -3)])
def test_limits_below_1(tmp_path, loader, key, value):
    with pytest.raises(RanksearchError, match=rf"{key} must be None or an integer >= 1, got {value}"):
        loader(tmp_path, **{key: value})


def test_load_dataset_unknown_name_and_option():
    with pytest.raises(
        RanksearchError, match=r"unknown dataset 'mnist'; built-in datasets: digits, fashion_mnist, cifar10"
    ):
        load_dataset("mnist")
    with pytest.raises(RanksearchError, match=r"unknown option 'size' for dataset 'digits'; it accepts: image_size"):
        load_dataset("digits", size=16)


def test_make_loaders_rejects_bad_batch_sizes(digit_splits):
    with pytest.raises(RanksearchError, match=r"eval_batch_size must be an integer >= 1, got 0"):
        make_loaders(digit_splits, eval_batch_size=0)
