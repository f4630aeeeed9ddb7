"""Training augmentation: random translations and flips, seeded, and cache keys that do not move."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from ranksearch.errors import RanksearchError
from ranksearch.models import small_cnn
from ranksearch.training import TrainSettings, augment_batch, load_or_train


def test_each_image_is_a_shifted_or_flipped_copy_of_itself():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1  # no zero pixel
    out = augment_batch(images, torch.Generator().manual_seed(0), shift=2)
    assert out.shape == images.shape
    for original, moved in zip(images, out, strict=True):
        padded = torch.nn.functional.pad(original, (2, 2, 2, 2))
        windows = [padded[:, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        candidates = windows + [w.flip(-1) for w in windows]
        assert any(torch.equal(moved, c) for c in candidates)


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    images = torch.randn(16, 3, 8, 8)
    first = augment_batch(images, torch.Generator().manual_seed(3))
    assert torch.equal(first, augment_batch(images, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, augment_batch(images, torch.Generator().manual_seed(4)))


def test_augment_must_be_a_boolean():
    with pytest.raises(RanksearchError, match="training setting augment must be true or false, got 1"):
        TrainSettings(augment=1)


def test_cache_keys_without_augmentation_do_not_change_and_with_it_do(tmp_path):
    data = TensorDataset(torch.randn(8, 1, 8, 8), torch.arange(8) % 10)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    identity = {"model": "small_cnn", "data": "toy"}
    paths = []
    for augment in (False, True):
        settings = TrainSettings(epochs=1, batch_size=4, augment=augment)
        model = small_cnn(in_channels=1, num_classes=10, width=2)
        _, _, path = load_or_train(model, identity, data, loader, settings, tmp_path, log=lambda _: None)
        paths.append(path)
    stored = torch.load(paths[0], weights_only=True)["identity"]["train"]
    assert "augment" not in stored  # the key of a model trained before the option existed
    assert paths[0] != paths[1]
