"""The longer fine-tune of one config, alone: a baseline's config at a MACs budget, or a config file.

``search_quality.py --final-epochs E`` fine-tunes the configs it chose; this script gives any config the same
recipe (BatchNorm recalibration, then ``finetune_epochs`` at lr 0.01 with cosine decay, the study's gradient
clipping and distillation) and measures it on the whole validation set, so recipes and configs can be compared
one at a time. Each result is appended as a JSON line to ``--out``. ``--augment`` applies the dense model's
training augmentation (random shifts and flips) to the fine-tune's batches.

    OMP_NUM_THREADS=1 python benchmarks/final_finetune.py --study studies/fashion_resnet20.toml \\
        --family "uniform cp" --budget 0.1 --epochs 5 --out runs/final_finetune.jsonl
    OMP_NUM_THREADS=1 python benchmarks/final_finetune.py --study studies/fashion_resnet20.toml \\
        --config runs/trial-12/config.json --budget 0.2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _quality import baseline_families  # benchmarks/ is the script's folder, on sys.path
from _quality_page import longer_finetune
from _study_setup import study_setup

import ranksearch
from ranksearch.training import augment_batch, evaluate_accuracy


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="studies/digits_cnn.toml", help="study file (model, data, evaluator)")
    parser.add_argument("--family", default="uniform tucker2", help="baseline family (search_quality's names)")
    parser.add_argument("--budget", type=float, default=0.1, help="MACs budget of the family (fraction of dense)")
    parser.add_argument("--config", help="a CompressionConfig JSON file instead of a family")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the fine-tune (default 5)")
    parser.add_argument("--lr", type=float, default=0.01, help="peak learning rate (default 0.01)")
    parser.add_argument("--augment", action="store_true", help="shift and flip the fine-tune's batches")
    parser.add_argument("--out", default="runs/final_finetune.jsonl", help="JSON lines file the result is added to")
    return parser.parse_args()


class Augmented:
    """A training loader whose batches' images are shifted and flipped (:func:`augment_batch`), seeded."""

    def __init__(self, loader: torch.utils.data.DataLoader, seed: int = 1) -> None:
        self.loader, self.generator = loader, loader.generator
        self.images = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for inputs, targets in self.loader:
            yield augment_batch(inputs, self.images), targets


def main() -> None:
    args = parse_args()
    setup = study_setup(args.study)
    study_file, data, model, evaluator = setup.study_file, setup.data, setup.model, setup.evaluator
    shape = evaluator.dense.input_shape
    if args.config:
        config = ranksearch.CompressionConfig.load(args.config)
    else:
        layers = list(study_file.space.layers(model, shape))
        config = baseline_families(model, layers, shape, evaluator.cache)[args.family](args.budget)
    start = time.process_time()
    loader = Augmented(data.train_loader) if args.augment else data.train_loader
    compressed = longer_finetune(evaluator, model, config, loader, args.epochs, lr=args.lr)
    macs = ranksearch.count(compressed, shape).macs / evaluator.dense.macs
    accuracy = evaluate_accuracy(compressed, data.val_loader, evaluator.device)
    dense = evaluate_accuracy(model, data.val_loader, evaluator.device)
    row = {"study": args.study, "config": args.config or f"{args.family}@{args.budget:g}", "macs": macs,
           "epochs": args.epochs, "lr": args.lr, "augment": args.augment, "distill": evaluator.distill,
           "accuracy": accuracy, "dense": dense, "points": 100 * (accuracy - dense),
           "cpu_seconds": time.process_time() - start}  # fmt: skip
    print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as file:
        file.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
