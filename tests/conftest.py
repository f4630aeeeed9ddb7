"""Shared fixtures: the seed, a tiny trained task, and tiny study files and searches built on it.

Plain helpers needed at collection time (layer geometries, registry-driven parametrize lists) are in
``_helpers.py``; test modules import that, never conftest or each other.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

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
    torch.manual_seed(0)  # the initial weights: session fixtures are set up before the autouse seed runs
    model = train(small_cnn(in_channels=1, num_classes=10, width=4), splits.train, TrainSettings(epochs=3, lr=0.05))
    return model, train_loader, val_loader


# The same study file as test_run.py's (the `ranksearch run` tests), for the tests of other modules.


@pytest.fixture
def make_search() -> Callable[..., object]:
    """``make_search(task, **kwargs)``: a fast in-memory RankSearch on ``task = (model, train, val)``
    (as test_study.py's: 3 rank fractions, 2 fine-tuning steps, the ``per-layer`` strategy, whose trials
    these tests count and inspect); ``kwargs`` override its options."""
    from ranksearch.evaluator import EvaluatorSettings
    from ranksearch.space import SearchSpace
    from ranksearch.study import RankSearch

    fast = EvaluatorSettings(finetune_steps=2, bn_batches=1, eval_batches=1)
    space = SearchSpace(rank_fractions=(0.25, 0.5, 0.75))

    def make(task, **kwargs) -> RankSearch:
        model, train_loader, val_loader = task
        options = {"storage": None, "space": space, "evaluator": fast, "study_name": "tiny", "strategy": "per-layer"}
        options.update(kwargs)
        return RankSearch(model, train_loader, val_loader, **options)

    return make
