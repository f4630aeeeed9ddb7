"""`ranksearch run` writes the report; `ranksearch report` and `ranksearch export` on a tiny study."""

from __future__ import annotations

import json

import pytest
import torch
from _helpers import write_study  # tests/ is on sys.path (pytest's prepend import mode)

import ranksearch as rs
from ranksearch.cli import main
from ranksearch.saving import read

pytestmark = pytest.mark.slow  # whole studies through the CLI (training, trials, reports, exports)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny study run once (4 trials): its file and folder."""
    folder = tmp_path_factory.mktemp("study")
    path = write_study(folder)
    assert main(["run", str(path)]) == 0
    return path, folder


def test_run_writes_the_report_next_to_the_database(study, capsys):
    path, folder = study
    assert main(["run", str(path)]) == 0  # the budget is spent: nothing runs, the report is rewritten
    out = capsys.readouterr().out
    assert f"report: {folder / 'tiny' / 'report.html'}" in out
    for name in ("report.html", "trials.csv", "pareto.csv", "hypervolume.csv", "summary.json"):
        assert (folder / "tiny" / name).is_file()
    summary = json.loads((folder / "tiny" / "summary.json").read_text())
    assert summary["completed"] == 4 and 0 in summary["pareto_trials"]


def test_report_from_a_study_file_or_a_storage(study, tmp_path, capsys):
    path, folder = study
    assert main(["report", str(path), "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "report.html").is_file()
    storage = f"sqlite:///{folder}/tiny.db"
    assert main(["report", "--storage", storage, "--study", "tiny", "--out", str(tmp_path / "b")]) == 0
    page = (tmp_path / "b" / "report.html").read_text(encoding="utf-8")
    assert "ranksearch export STUDY.toml --knee" in page  # no study file: the hint says where it goes
    assert "report:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report"], "say which study: a study file, or --storage URL --study NAME"),
        (["report", "--storage", "sqlite:///{folder}/tiny.db", "--study", "nope"], "no study 'nope' in .*'tiny'"),
        (["report", "--storage", "sqlite:///{folder}/missing.db", "--study", "tiny"], "does not exist"),
        (["report", "{path}", "--study", "tiny"], "not both"),
        (["report", "{path}", "--screenshot", "x.png", "--screenshot-height", "50"], "must be >= 100 pixels"),
        (["export", "{path}", "--trial", "99"], r"no trial 99 \(finished trials are 0\.\.3\)"),
        (["export", "{path}", "--max-macs", "0.0001"], "no trial has macs <= 0.0001 of dense; the cheapest"),
        (["export", "{path}", "--min-accuracy", "1.01"], "no trial reaches accuracy 1.0100; the best is trial"),
        (["export", "{path}", "--min-fidelity", "0.9"], r"min_fidelity: study 'tiny' measured no fidelity"),
        (["export", "{path}"], "say which trial"),
        (["export", "{path}", "--knee", "--epochs", "-1"], "--epochs must be >= 0"),
    ],
)
def test_bad_report_and_export_requests_exit_2(study, capsys, args, message):
    path, folder = study
    args = [a.format(path=path, folder=folder) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("ranksearch: error: ")
    assert __import__("re").search(message, err), err


def test_export_of_a_study_that_never_ran(tmp_path, capsys):
    path = write_study(tmp_path)
    assert main(["export", str(path), "--knee"]) == 2
    assert "does not exist (no study run there yet?)" in capsys.readouterr().err


def test_exported_model_loads_and_reproduces_the_trial(study, tmp_path, capsys):
    from ranksearch.runner import prepare
    from ranksearch.studyfile import load_study_file

    path, _ = study
    out = tmp_path / "export"
    assert main(["export", str(path), "--trial", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "chosen: trial 2" in printed and "rebuilt trial 2" in printed
    config = rs.CompressionConfig.load(out / "config.json")
    prepared = prepare(load_study_file(path))
    results = prepared.search.results()
    assert config == results.config(2)
    row = results.row(2)
    loaded = rs.load(out / "model.pt")  # a built-in model: no base model needed
    cost = rs.count(loaded, prepared.search.evaluator.dense.input_shape)
    assert (cost.macs, cost.params) == (row["macs_count"], row["params_count"])  # the same MACs/params as the trial
    again = prepared.search.evaluator.evaluate(config, keep_model=True)  # the trial's compressed model, rebuilt
    batch = prepared.search.evaluator.val_batches[0][0]
    with torch.no_grad():
        assert torch.equal(loaded(batch), again.model.eval()(batch))  # exactly: same weights, same ops
    assert again.accuracy == pytest.approx(row["accuracy"], abs=1e-12)  # the evaluator is deterministic
    meta = read(out / "model.pt")["metadata"]
    assert meta["trial"] == 2 and meta["study"] == "tiny"


def test_export_with_more_epochs_reports_before_and_after(study, tmp_path, capsys):
    path, _ = study
    assert main(["export", str(path), "--knee", "--epochs", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fine-tune epoch 1/1: loss" in out and "fine-tuned 1 epochs: accuracy " in out
    meta = read(tmp_path / "model.pt")["metadata"]
    assert meta["finetune_epochs"] == 1 and "accuracy_before" in meta


def test_export_to_onnx(study, tmp_path, capsys):
    pytest.importorskip(
        "onnxruntime", reason="ONNX export is checked with onnxruntime (pip install 'ranksearch[onnx]')"
    )
    path, _ = study
    assert main(["export", str(path), "--max-macs", "0.9", "--onnx", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "model.onnx").is_file()
    assert "max |onnxruntime - torch| = " in capsys.readouterr().out


@pytest.mark.slow  # kaleido and a browser screenshot
def test_report_with_images_and_a_screenshot(study, tmp_path, capsys):
    from ranksearch.render.browser import find_chromium
    from ranksearch.render.images import static_export_unavailable

    path, _ = study
    shot = tmp_path / "shot.png"
    # one format here (test_images.py exports the others)
    assert main(["report", str(path), "--out", str(tmp_path), "--images", "png", "--screenshot", str(shot)]) == 0
    out = capsys.readouterr().out
    reason = static_export_unavailable()
    if reason is None:
        for name in ("pareto_macs", "layers", "parallel", "hypervolume", "finetune"):
            assert (tmp_path / "figures" / f"{name}.png").is_file()
    else:
        assert f"note: no static images: {reason}" in out  # one line, and the rest is written
    assert shot.is_file() == (find_chromium() is not None)
    assert (tmp_path / "report.html").is_file()
    if find_chromium() is not None:
        from PIL import Image

        with Image.open(shot) as image:
            assert image.size[1] > 2000  # the whole page
        top = tmp_path / "top.png"
        assert (
            main(["report", str(path), "--out", str(tmp_path), "--screenshot", str(top), "--screenshot-height", "900"])
            == 0
        )
        with Image.open(top) as image:
            assert image.size == (1400, 900)


def test_report_refuses_an_unknown_image_format(study, tmp_path, capsys):
    path, _ = study
    assert main(["report", str(path), "--out", str(tmp_path), "--images", "gif"]) == 2
    assert "gif" in capsys.readouterr().err


def test_ctrl_c_writes_the_report_of_what_is_done_and_exits_130(tmp_path, capsys, monkeypatch):
    from ranksearch.study import RankSearch

    path = write_study(tmp_path)
    real = RankSearch.optimize

    def interrupted(self, n_trials=None, **kwargs):
        real(self, 2, **kwargs)  # two trials finish, then the user presses Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(RankSearch, "optimize", interrupted)
    assert main(["run", str(path)]) == 130
    out = capsys.readouterr().out
    assert "interrupted: 2 trials left; run the same command again to continue" in out
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert summary["completed"] == 2
    monkeypatch.setattr(RankSearch, "optimize", real)
    assert main(["run", str(path)]) == 0 and "2/4 trials done, running 2" in capsys.readouterr().out
