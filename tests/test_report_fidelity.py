"""Reports, choosing and export of studies whose quality is not (only) accuracy: a label-free study of an
embedding model ranked by fidelity, a Hugging Face-like model of dict inputs, and synthetic records of studies
that measured both qualities.

The two tiny studies run once per module (4 and 2 trials, 2 fine-tune steps); the ONNX parts are optional
(``ranksearch[onnx]``) and slow, like every ONNX export. Tolerances: a saved and reloaded model reproduces the
exported one exactly (same weights, same ops); onnxruntime agrees with torch within 1e-4.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _helpers import write_study  # tests/ is on sys.path (pytest's prepend import mode)
from _records import make_results, record, toy_records
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import ranksearch as rs
from ranksearch.cli import main
from ranksearch.errors import RanksearchError
from ranksearch.evaluator import EvaluatorSettings
from ranksearch.record import TrialRecord
from ranksearch.report import StudyResults, choose, dashboard_html, figures, write_report
from ranksearch.space import SearchSpace

ONNX_ATOL = 1e-4
VOCAB, LENGTH, DIM, CLASSES = 13, 6, 32, 3


class Embedder(nn.Module):
    """A tiny conv net whose outputs are 16-dimensional embeddings (no classes, no labels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))  # (B, 8, 8, 8)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)  # (B, 8, 4, 4)
        return self.fc(x.flatten(1))  # (B, 16)


class Keywords(nn.Module):
    """A Hugging Face-like classifier: ``input_ids`` and ``attention_mask`` keywords in, ``{"logits": ...}`` out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.hidden = nn.Linear(DIM, DIM)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, D)
        return {"logits": self.head(torch.relu(self.hidden(pooled)))}  # (B, C)


class Tokens(Dataset):
    """Dict samples as a Hugging Face dataset yields them: ``input_ids``, ``attention_mask`` and ``labels``."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
        self.mask = (torch.rand(n, LENGTH, generator=generator) > 0.2).long()
        self.labels = self.ids[:, 0] % CLASSES

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def unlabelled(n: int, seed: int) -> DataLoader:
    """Batches of inputs only (the dataset yields 1-tuples)."""
    return DataLoader(TensorDataset(torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))), 16)


def tiny_search(model, train, val, storage, name, objectives, evaluator, warm_start):
    from ranksearch.study import RankSearch

    return RankSearch(
        model, train, val, objectives=objectives, storage=storage, study_name=name, evaluator=evaluator,
        space=SearchSpace(rank_fractions=(0.25, 0.5, 0.75)), strategy="per-layer", warm_start=warm_start,
        heartbeat=None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fidelity_study(tmp_path_factory):
    """A 4-trial label-free study of :class:`Embedder` (dense, uniform 25% and 50%, one sampled), stored in
    SQLite under the name and storage of ``write_study``'s file: ``(search, results as stored, study file)``."""
    from ranksearch.study import load_results

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fidelity")
    storage = f"sqlite:///{folder}/tiny.db"
    settings = EvaluatorSettings(fidelity="cosine", finetune_steps=2, bn_batches=0, eval_batches=1)
    search = tiny_search(
        Embedder().eval(), unlabelled(64, 1), unlabelled(32, 2), storage, "tiny", ["fidelity", "macs"], settings,
        warm_start=(0.25, 0.5),
    )  # fmt: skip
    search.optimize(budget=4, show_progress=False)
    return search, load_results(storage, "tiny"), write_study(folder)


@pytest.fixture(scope="module")
def keywords_study():
    """A 2-trial in-memory accuracy study of :class:`Keywords` on dict batches (dense, then uniform 25%)."""
    torch.manual_seed(0)
    settings = EvaluatorSettings(finetune_steps=2, bn_batches=0, eval_batches=1)
    train, val = DataLoader(Tokens(64, 1), batch_size=16), DataLoader(Tokens(32, 2), batch_size=16)
    search = tiny_search(Keywords().eval(), train, val, None, "keywords", ["accuracy", "macs"], settings, (0.25,))
    search.optimize(budget=2, show_progress=False)
    return search


def cheapest_reaching(results: StudyResults, floor: float) -> int:
    """By hand: the trial of least MACs (then highest fidelity, then first) with fidelity >= floor."""
    done = results.completed()
    reaching = done[done["fidelity"] >= floor]
    return int(reaching.sort_values(["macs", "fidelity", "trial"], ascending=[True, False, True]).iloc[0]["trial"])


# --- a label-free study: fidelity is the quality ------------------------------------------------------------
def test_a_fidelity_study_is_ranked_by_fidelity(fidelity_study):
    _, results, _ = fidelity_study
    assert results.quality == "fidelity" and results.qualities == ("fidelity",) and results.costs == ("macs",)
    assert results.directions == ("maximize", "minimize") and math.isnan(results.dense["accuracy"])
    done = results.completed()
    assert len(done) == 4 and done["failure"].isna().all() and done["accuracy"].isna().all()
    assert done.loc[done["trial"] == 0, "fidelity"].item() == pytest.approx(1.0, abs=1e-6)  # the dense model
    front = results.pareto()
    assert 0 in front["trial"].tolist()  # fidelity 1.0 at 1.0 MACs: on the front when fidelity is maximized
    for row in done.itertuples():  # each trial is on the front, or a front trial dominates it
        better = front[(front["fidelity"] >= row.fidelity) & (front["macs"] <= row.macs)]
        strictly = (better["fidelity"] > row.fidelity) | (better["macs"] < row.macs)
        assert row.is_pareto == (not strictly.any())
    assert results.reference_point() == {"fidelity": 0.0, "macs": 1.0} and results.hypervolume() > 0


def test_best_per_target_of_a_fidelity_study_is_the_highest_fidelity(fidelity_study):
    _, results, _ = fidelity_study
    best = results.best_per_target({"macs": [0.5, 0.9]})
    assert list(best.columns) == ["cost", "target", "trial", "fidelity", "value", "macs", "params", "methods"]
    done = results.completed()
    for row in best.itertuples():
        within = done[done["macs_ratio"] <= row.target]
        assert row.fidelity == within["fidelity"].max()
        assert row.trial in within.loc[within["fidelity"] == row.fidelity, "trial"].tolist()


def test_choosing_in_a_fidelity_study(fidelity_study):
    _, results, _ = fidelity_study
    compressed = results.completed().query("trial != 0")
    floor = float(compressed["fidelity"].median())
    chosen = choose(results, min_fidelity=floor)
    assert chosen.trial == cheapest_reaching(results, floor)
    assert chosen.rule.endswith(f"fidelity >= {floor:.4f}, cheapest in macs") and "(fidelity 0." in chosen.rule
    assert "knee of fidelity vs macs" in choose(results, knee=True).rule
    capped = choose(results, max_costs={"macs": 0.9})
    assert capped.row["fidelity"] == compressed["fidelity"].max() and capped.rule.endswith("highest fidelity")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"min_accuracy": 0.5}, r"min_accuracy: study 'tiny' measured no accuracy \(its batches carry no labels\);"
                                r" its quality is fidelity.*give a fidelity floor \(min_fidelity, e\.g\. 0\.95\)"),
        ({"max_accuracy_drop": 0.01}, r"max_accuracy_drop: study 'tiny' measured no accuracy"),
        ({"min_fidelity": 1.5}, r"min_fidelity must be a number in \[0, 1\] \(the dense model: 1\.0\), got 1\.5"),
        ({"min_fidelity": float("nan")}, r"min_fidelity must be a number in \[0, 1\]"),
        ({"min_fidelity": True}, r"min_fidelity must be a number in \[0, 1\]"),
        ({"min_fidelity": 1.0, "max_costs": {"macs": 0.9}},
         r"no trial with macs <= 0\.9 reaches fidelity 1\.0000; the best is trial \d+ \(fidelity 0\.\d{4}, macs"),
        ({"min_fidelity": 0.5, "knee": True}, "the knee rule picks its own fidelity: drop the fidelity floor"),
    ],
)  # fmt: skip
def test_fidelity_floors_say_what_is_wrong(fidelity_study, rule, message):
    _, results, _ = fidelity_study
    with pytest.raises(RanksearchError, match=message):
        choose(results, **rule)


def test_a_fidelity_floor_in_an_accuracy_study_is_refused():
    with pytest.raises(RanksearchError, match=r"min_fidelity: study 'toy' measured no fidelity \(objectives "
                                               r"accuracy, macs\): give an accuracy floor"):  # fmt: skip
        choose(make_results(toy_records()), min_fidelity=0.9)


def test_the_report_of_a_fidelity_study(fidelity_study, tmp_path):
    _, results, _ = fidelity_study
    assert "finetune" not in figures(results)  # its stages are accuracies: none without labels
    files = write_report(results, tmp_path, study_file="emb.toml")
    page = files.html.read_text(encoding="utf-8")
    assert "Fidelity vs MACs (fraction of dense)" in page and "cosine agreement" in page
    assert "dense accuracy" not in page and "input (1, 1, 8, 8)" in page
    assert "ranksearch export emb.toml --min-fidelity 0.990" in page and "highest fidelity at &lt;= 50%" in page
    assert 'id="section-finetune"' not in page and "accuracy zero-shot" not in page

    def refuse(constant: str) -> None:
        raise AssertionError(f"summary.json holds {constant}")

    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)  # strict JSON: no NaN
    assert summary["quality"] == "fidelity" and summary["dense"]["accuracy"] is None
    assert summary["reference_point"] == {"fidelity": 0.0, "macs": 1.0}


def test_export_chooses_by_fidelity_and_fine_tunes_by_distillation(fidelity_study, tmp_path, capsys):
    search, results, _ = fidelity_study
    floor = float(results.completed().query("trial != 0")["fidelity"].median())
    exported = search.export(tmp_path, min_fidelity=floor, epochs=1)
    trial = cheapest_reaching(results, floor)
    out = capsys.readouterr().out
    recorded = results.row(trial)["fidelity"]
    assert f"chosen: trial {trial} (fidelity" in out and f"fidelity {recorded:.4f} (recorded {recorded:.4f})" in out
    assert "fine-tune epoch 1/1: loss" in out and "fine-tuned 1 epochs: fidelity " in out
    meta = exported.metadata
    assert meta["trial"] == trial and meta["fidelity_recorded"] == recorded and meta["fidelity_before"] == recorded
    assert "accuracy" not in meta and meta["fidelity"] > meta["fidelity_before"]  # distilled towards the dense model
    assert meta["fidelity"] == search.evaluator.measure_fidelity(exported.model)
    loaded = rs.load(exported.model_path, base_model=Embedder())
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), exported.model(x))


@pytest.mark.slow  # an ONNX export through torch's exporter and onnxruntime
def test_export_of_a_fidelity_study_to_onnx(fidelity_study, tmp_path):
    pytest.importorskip(
        "onnxruntime", reason="ONNX export is checked with onnxruntime (pip install 'ranksearch[onnx]')"
    )
    search, _, _ = fidelity_study
    exported = search.export(tmp_path, knee=True, onnx=True, log=lambda line: None)
    assert exported.onnx_path.is_file() and exported.onnx_max_abs_diff < ONNX_ATOL


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--min-accuracy", "0.5"], r"min_accuracy: study 'tiny' measured no accuracy"),
        (["--min-fidelity", "2"], r"min_fidelity must be a number in \[0, 1\]"),
        (["--min-fidelity", "1", "--max-macs", "0.9"], r"no trial with macs <= 0\.9 reaches fidelity 1\.0000"),
        (["--min-fidelity", "0.5", "--knee"], "the knee rule picks its own fidelity"),
    ],
)
def test_the_export_command_takes_a_fidelity_floor(fidelity_study, capsys, option, message):
    _, _, study_file = fidelity_study  # the file names the stored study; the rule is refused before any model loads
    assert main(["export", str(study_file), *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ranksearch: error: ") and __import__("re").search(message, err), err


# --- both qualities (synthetic records) ----------------------------------------------------------------------
def both_records(objectives: tuple[str, ...]) -> list[TrialRecord]:
    """Trials measuring accuracy and fidelity: (number, accuracy, fidelity, macs)."""
    rows = [(0, 0.95, 1.0, 1.0), (1, 0.93, 0.90, 0.5), (2, 0.90, 0.97, 0.4), (3, 0.80, 0.85, 0.2)]
    records = []
    for number, accuracy, fidelity, macs in rows:
        base = record(number, accuracy, macs, fidelity=fidelity)
        values = {"accuracy": accuracy, "fidelity": fidelity, "macs": macs}
        records.append(TrialRecord(number, "complete", tuple(values[o] for o in objectives), base.params, base.attrs))
    return records


def both_results(objectives: tuple[str, ...]) -> StudyResults:
    return StudyResults.from_records(
        both_records(objectives), name="both", objectives=objectives, layers=("conv1", "block.0", "fc"),
        dense={"accuracy": 0.95, "macs": 1000, "params": 500, "input_shape": [1, 1, 8, 8]},
        settings={"targets": {"macs": [0.45]}},
    )  # fmt: skip


def test_with_both_objectives_accuracy_leads_and_fidelity_is_shown():
    results = both_results(("accuracy", "fidelity", "macs"))
    assert results.quality == "accuracy" and results.qualities == ("accuracy", "fidelity")
    assert results.costs == ("macs",) and results.directions == ("maximize", "maximize", "minimize")
    best = results.best_per_target()
    assert list(best.columns)[:6] == ["cost", "target", "trial", "accuracy", "fidelity", "value"]
    assert best["trial"].tolist() == [2] and best["fidelity"].tolist() == [0.97]
    assert choose(results, max_costs={"macs": 0.6}).trial == 1  # the most accurate, not the most faithful
    chosen = choose(results, min_accuracy=0.85, min_fidelity=0.95)  # both floors: 1 misses fidelity, 3 accuracy
    assert chosen.trial == 2 and "accuracy >= 0.8500, fidelity >= 0.9500, cheapest in macs" in chosen.rule
    assert "(accuracy 0.9000, fidelity 0.9700, macs 0.400" in chosen.rule
    unreachable = r"no trial with macs <= 0\.6 reaches accuracy 0\.9400 and fidelity 0\.9900; the best is trial 1 "
    with pytest.raises(RanksearchError, match=unreachable + r"\(accuracy 0\.9300, fidelity 0\.9000"):
        choose(results, min_accuracy=0.94, min_fidelity=0.99, max_costs={"macs": 0.6})
    page = dashboard_html(results, figures(results))
    assert "dense accuracy" in page and "auto agreement" in page and "--min-accuracy 0.940" in page


def test_a_fidelity_study_with_labels_ranks_by_fidelity_and_shows_accuracy():
    results = both_results(("fidelity", "macs"))
    assert results.quality == "fidelity" and results.qualities == ("fidelity", "accuracy")
    assert list(results.trials.columns[:4]) == ["trial", "fidelity", "macs", "accuracy"]
    assert choose(results, max_costs={"macs": 0.6}).trial == 2  # the most faithful
    assert choose(results, max_accuracy_drop=0.03).trial == 1  # measured with labels: accuracy floors work
    assert "finetune" in figures(results)  # the accuracy stages were measured
    np.testing.assert_allclose(results.best_per_target()[["fidelity", "accuracy"]].to_numpy(), [[0.97, 0.90]])


# --- a model of dict inputs ----------------------------------------------------------------------------------
def test_a_dict_input_study_reports_its_input_shapes(keywords_study, tmp_path):
    results = keywords_study.results()
    shapes = {name: tuple(shape) for name, shape in results.dense["input_shape"].items()}
    assert shapes == {"input_ids": (1, LENGTH), "attention_mask": (1, LENGTH)}
    assert len(results.completed()) == 2 and results.completed()["failure"].isna().all()
    page = write_report(results, tmp_path).html.read_text(encoding="utf-8")
    assert f"input input_ids (1, {LENGTH}), attention_mask (1, {LENGTH})" in page
    assert "dense accuracy" in page and "Accuracy vs MACs" in page


def test_a_dict_input_export_fine_tunes_with_the_evaluators_loss(keywords_study, tmp_path, monkeypatch):
    evaluator = keywords_study.evaluator
    calls = []

    def loss(outputs, targets):  # the study's loss, counted
        calls.append(tuple(outputs.shape))
        return nn.functional.cross_entropy(outputs, targets)

    monkeypatch.setattr(evaluator, "loss_fn", loss)
    exported = keywords_study.export(tmp_path, max_costs={"macs": 0.9}, epochs=1, log=lambda line: None)
    # the rebuild's brief fine-tune (2 steps), then an epoch of 4 batches of 16, read through the adapter ("logits")
    assert calls == [(16, CLASSES)] * (evaluator.settings.finetune_steps + len(keywords_study.train_loader))
    assert exported.metadata["trial"] == 1 and "accuracy_before" in exported.metadata
    loaded = rs.load(exported.model_path, base_model=Keywords())
    batch = {"input_ids": torch.randint(0, VOCAB, (3, LENGTH)), "attention_mask": torch.ones(3, LENGTH)}
    with torch.no_grad():
        assert torch.equal(loaded(**batch)["logits"], exported.model(**batch)["logits"])


@pytest.mark.slow  # an ONNX export through torch's exporter and onnxruntime
def test_a_dict_input_export_to_onnx_has_named_inputs(keywords_study, tmp_path):
    ort = pytest.importorskip(
        "onnxruntime", reason="ONNX export is checked with onnxruntime (pip install 'ranksearch[onnx]')"
    )
    exported = keywords_study.export(tmp_path, max_costs={"macs": 0.9}, onnx=True, log=lambda line: None)
    assert exported.onnx_max_abs_diff < ONNX_ATOL
    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]


def test_rank_search_takes_the_users_loss_and_adapter():
    """RankSearch(loss_fn=, adapter=): batches in the user's own layout (``{"x": ..., "y": ...}`` dicts, which
    the default adapter would feed to the model as keyword arguments) and a loss every fine-tune step uses."""
    from ranksearch.adapters import BatchAdapter
    from ranksearch.study import RankSearch

    class Pairs(Dataset):
        def __init__(self, tokens: Tokens) -> None:
            self.tokens = tokens

        def __len__(self) -> int:
            return len(self.tokens)

        def __getitem__(self, i: int) -> dict[str, object]:
            sample = self.tokens[i]
            return {"x": {"input_ids": sample["input_ids"], "attention_mask": sample["attention_mask"]},
                    "y": sample["labels"]}  # fmt: skip

    calls = []

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(outputs.shape))
        return nn.functional.cross_entropy(outputs, targets)

    torch.manual_seed(0)
    settings = EvaluatorSettings(finetune_steps=3, bn_batches=0, eval_batches=1)
    train, val = DataLoader(Pairs(Tokens(64, 1)), batch_size=16), DataLoader(Pairs(Tokens(32, 2)), batch_size=16)
    search = RankSearch(Keywords().eval(), train, val, storage=None, evaluator=settings, strategy="per-layer",
                        space=SearchSpace(rank_fractions=(0.5,)), warm_start=(0.5,), heartbeat=None, loss_fn=loss,
                        adapter=BatchAdapter(batch=lambda b: (b["x"], b["y"])))  # fmt: skip
    search.optimize(budget=2, show_progress=False)
    frame = search.trials_dataframe()
    assert calls == [(16, CLASSES)] * (2 * settings.finetune_steps)  # both trials' brief fine-tunes
    assert frame["accuracy"].between(0, 1).all() and frame["macs"].iloc[1] < 1
