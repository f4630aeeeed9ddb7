"""Hostile command-line input: the table of what a user can get wrong, and what ``ranksearch`` answers.

Each row is one mistake given to ``ranksearch.cli.main``: a broken study file, a model or data set that
cannot be used, a bad storage, an impossible trial or budget. Every row must exit with status 2 and a
message naming what is wrong: ``ranksearch: error: ...``, or argparse's usage error for a malformed
option; never a Python traceback. The table is the documented contract: a new kind of bad input gets a
row here.

In a row's study file and command line, ``{file}`` is the row's study file, ``{tmp}`` its own folder and
``{shared}`` a folder made once for the module: a trained baseline cache, a finished two-trial study
``done`` (``done.toml``, ``done.db``), saved models with something wrong, and small CIFAR-10 folders.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from ranksearch.cli import main
from ranksearch.models import small_cnn

TRACEBACK = "Traceback (most recent call last)"
ERROR = "ranksearch: error: "  # how main reports a RanksearchError (exit status 2)
USAGE = "usage"  # argparse's form (SystemExit 2): "usage: ranksearch CMD ...\nranksearch CMD: error: ..."

BASE = {
    "study": {"name": '"tiny"', "storage": '"sqlite:///{tmp}/tiny.db"', "n_trials": "2"},
    "model": {"name": '"small_cnn"', "options": "{ width = 4 }"},
    "data": {"name": '"digits"', "options": "{ image_size = 8 }", "batch_size": "32", "eval_batch_size": "120"},
    "training": {"epochs": "1", "cache_dir": '"{shared}/baselines"'},
    "space": {"rank_fractions": "[0.25, 0.5]"},
    "evaluator": {"finetune_steps": "2", "bn_batches": "1", "eval_batches": "1"},
}


def study(**changes: dict[str, str | None]) -> str:
    """The tiny study of tests/test_run.py as TOML, with keys set (to TOML text) or removed (None) per section."""
    lines = []
    for section in dict.fromkeys([*BASE, *changes]):
        table = {**BASE.get(section, {}), **changes.get(section, {})}
        lines += [f"[{section}]", *(f"{key} = {value}" for key, value in table.items() if value is not None)]
    return "\n".join(lines) + "\n"


def saved(path: str) -> dict[str, str | None]:
    """A ``[model]`` section loading a saved module instead of the built-in model."""
    return {"name": None, "options": None, "path": f'"{path}"'}


def cifar(root: str, **options: str) -> dict[str, str]:
    """A ``[data]`` section reading a user's CIFAR-10 batches from ``root``."""
    extra = "".join(f", {key} = {value}" for key, value in options.items())
    return {"name": '"cifar10"', "options": f'{{ root = "{root}"{extra} }}'}


def digits(options: str) -> dict[str, str]:
    """A ``[data]`` section of 8x8 digits with more loader options."""
    return {"options": f"{{ image_size = 8, {options} }}"}


RUN = ("run", "{file}")
DONE = "sqlite:///{shared}/done.db"
REPORT = ("report", "--storage", DONE, "--study", "done")
EXPORT = ("export", "{shared}/done.toml")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def row(id_: str, argv: tuple[str, ...], message: str, *, file: str | bytes | None = None, form=ERROR, marks=()):
    """One documented mistake: its command line, the study file it reads, and the message it must give."""
    return pytest.param(argv, file, 2, form, message, id=id_, marks=marks)


def bad_file(id_: str, text: str | bytes, message: str, **options):
    """A row running a bad study file."""
    return row(id_, RUN, message, file=text, **options)


CASES = [
    # --- the study file as a whole ---
    row("missing study file", ("run", "{tmp}/nope.toml"), r"cannot read study file '.*nope\.toml': No such file"),
    row("study file is a folder", ("run", "{tmp}"), r"cannot read study file '.*': Is a directory"),
    bad_file("empty", "", r"the study file is empty \(it needs at least \[model\] and \[data\]\)"),
    bad_file("only comments", "\n  \n# nothing\n", r"the study file is empty"),
    bad_file("not TOML", "[model\nname = 1\n", r"not valid TOML: .*line 1"),
    bad_file("not UTF-8", b"[model]\nname = '\xff\xfe'\n", r"not UTF-8 text \(byte 16 is 0xff\)"),
    bad_file("unknown section", study(search={}), r"unknown section \[search\] \(valid: study, model, data"),
    bad_file("section that is not a table", "study = 3\n", r"\[study\] must be a table, got int"),
    # --- unknown keys, in every section ---
    bad_file("key in [study]", study(study={"n_trails": "3"}), r"\[study\]: unknown key 'n_trails'; did you mean 'n_"),
    bad_file("key in [model]", study(model={"widht": "4"}), r"\[model\]: unknown key 'widht' \(valid: name, path"),
    bad_file("key in [data]", study(data={"batchsize": "8"}), r"\[data\]: unknown key 'batchsize'; did you mean"),
    bad_file("key in [training]", study(training={"epoch": "2"}), r"\[training\]: unknown key 'epoch'; did you mean"),
    bad_file("key in [space]", study(space={"method": '["svd"]'}), r"\[space\]: unknown key 'method'; did you mean"),
    bad_file("key in [evaluator]", study(evaluator={"zzz": "1"}), r"\[evaluator\]: unknown key 'zzz' \(valid: fine"),
    bad_file("key in [latency]", study(latency={"repeat": "3"}), r"\[latency\]: unknown key 'repeat'; did you mean"),
    bad_file("data option", study(data=digits("colour = 1")), r"\[data\] unknown option 'colour' for dataset 'dig"),
    bad_file("model option", study(model={"options": "{ depth = 3 }"}), r"\[model\] options \{'depth': 3\} do not fit"),
    # --- wrong types ---
    bad_file("n_trials string", study(study={"n_trials": '"5"'}), r"\[study\]: n_trials must be an int, got '5' \(str"),
    bad_file("n_trials float", study(study={"n_trials": "2.5"}), r"\[study\]: n_trials must be an int, got 2\.5"),
    bad_file("lr boolean", study(evaluator={"lr": "true"}), r"\[evaluator\]: lr must be a number, got True \(bool\)"),
    bad_file("options not a table", study(model={"options": "4"}), r"\[model\]: options must be a table, got 4"),
    bad_file("fractions not a list", study(space={"rank_fractions": "0.5"}), r"rank_fractions must be a list of num"),
    bad_file("objectives string", study(study={"objectives": '"accuracy"'}), r"objectives must be a list of strings"),
    bad_file("model path int", study(model=saved("x") | {"path": "3"}), r"\[model\]: path must be a string, got 3"),
    bad_file("image_size string", study(data={"options": '{ image_size = "8" }'}), r"image_size must be an integer"),
    bad_file("width string", study(model={"options": '{ width = "4" }'}), r"'small_cnn': width must be an int >= 1"),
    bad_file("data seed string", study(data=digits('seed = "x"')), r"\[data\] seed must be an integer >= 0, got 'x'"),
    bad_file("val_fraction string", study(data=digits('val_fraction = "x"')), r"val_fraction must be strictly"),
    bad_file("normalize string", study(data=digits('normalize = "no"')), r"\[data\] normalize must be true or false"),
    bad_file("data root int", study(data={"name": '"cifar10"', "options": "{ root = 3 }"}), r"CIFAR-10 root must be a"),
    # --- negative, zero and non-finite budgets and sizes ---
    bad_file("n_trials 0", study(study={"n_trials": "0"}), r"\[study\] n_trials must be >= 1, got 0"),
    bad_file("n_trials negative", study(study={"n_trials": "-5"}), r"\[study\] n_trials must be >= 1, got -5"),
    bad_file("timeout negative", study(study={"timeout": "-1"}), r"\[study\] timeout must be > 0 seconds, got -1"),
    bad_file("timeout nan", study(study={"timeout": "nan"}), r"\[study\] timeout must be > 0 seconds, got nan"),
    bad_file("heartbeat 0", study(study={"heartbeat": "0"}), r"\[study\] heartbeat must be an int >= 1 \(seconds\)"),
    bad_file("sampler seed negative", study(study={"seed": "-1"}), r"\[study\] seed must be an int in \[0, 2\*\*32\)"),
    bad_file("warm_start 1.5", study(study={"warm_start": "[1.5]"}), r"warm_start fractions must be numbers in \("),
    bad_file(
        "warm_start_heuristics 0",
        study(study={"warm_start_heuristics": "[0]"}),
        r"\[study\] warm_start_heuristics budgets must be numbers in \(0, 1\], got 0\.0",
    ),
    bad_file("finetune_steps -3", study(evaluator={"finetune_steps": "-3"}), r"finetune_steps must be an int >= 0"),
    bad_file("bn_batches -1", study(evaluator={"bn_batches": "-1"}), r"setting bn_batches must be an int >= 0, got -1"),
    bad_file("eval_batches 0", study(evaluator={"eval_batches": "0"}), r"eval_batches must be an int >= 1 or None"),
    bad_file("lr inf", study(evaluator={"lr": "inf"}), r"setting lr must be a finite number >= 0, got inf"),
    bad_file("training epochs -1", study(training={"epochs": "-1"}), r"\[training\]: training setting epochs must be"),
    bad_file("training lr inf", study(training={"lr": "inf"}), r"training setting lr must be a finite number > 0"),
    bad_file("training weight_decay -1", study(training={"weight_decay": "-1"}), r"weight_decay must be a finite"),
    bad_file(
        "training batch larger than the data",
        study(training={"batch_size": "100000"}),
        r"training setting batch_size 100000 is larger than the training set \(\d+ images\)",
    ),
    bad_file("batch_size 0", study(data={"batch_size": "0"}), r"\[data\] batch_size must be >= 1, got 0"),
    bad_file("data seed negative", study(data=digits("seed = -1")), r"\[data\] seed must be an integer >= 0, got -1"),
    bad_file("data limit 0", study(data=cifar("{shared}/cifar_ok", limit_train="0")), r"limit_train must be None or"),
    bad_file("latency repeats 0", study(latency={"repeats": "0"}), r"latency setting repeats must be an int >= 1"),
    bad_file("model width 0", study(model={"options": "{ width = 0 }"}), r"'small_cnn': width must be an int >= 1"),
    bad_file("model width -2", study(model={"options": "{ width = -2 }"}), r"width must be an int >= 1, got -2"),
    # --- unknown names and values out of range ---
    bad_file("unknown method", study(space={"methods": '["svd", "qr"]'}), r"\[space\]: unknown method 'qr' in the"),
    bad_file("no method", study(space={"methods": "[]"}), r"\[space\]: the search space needs at least one method"),
    bad_file("rank fraction 0", study(space={"rank_fractions": "[0, 0.5]"}), r"rank fractions must be numbers in \("),
    bad_file("rank fraction 1.5", study(space={"rank_fractions": "[1.5]"}), r"in \(0, 1\], got 1\.5"),
    bad_file("rank fraction negative", study(space={"rank_fractions": "[-0.5]"}), r"in \(0, 1\], got -0\.5"),
    bad_file("rank fraction nan", study(space={"rank_fractions": "[nan]"}), r"in \(0, 1\], got nan"),
    bad_file("include matches nothing", study(space={"include": '["x*"]'}), r"no layer to search: .*include/exclude"),
    bad_file("unknown objective", study(study={"objectives": '["accuracy", "energy"]'}), r"unknown objective 'energy'"),
    bad_file(
        "unknown sampler", study(study={"sampler": '"grid"'}), r"\[study\] unknown sampler 'grid'; available: tpe"
    ),
    bad_file("unknown model", study(model={"name": '"vgg"'}), r"unknown model 'vgg'; built-in models: small_cnn"),
    bad_file("unknown dataset", study(data={"name": '"imagenet"'}), r"\[data\] unknown dataset 'imagenet'; built-in"),
    bad_file(
        "image_size 4", study(data={"options": "{ image_size = 4 }"}), r"\[data\] image_size must be an integer >= 8"
    ),
    bad_file("unknown device", study(evaluator={"device": '"tpu0"'}), r"device 'tpu0' is not a torch device"),
    bad_file("latency float16 on CPU", study(latency={"dtype": '"float16"'}), r"dtype float16 is for CUDA devices"),
    # --- the model ---
    bad_file("model name and path", study(model={"path": '"m.pt"'}), r"\[model\] needs exactly one of 'name' \(a bui"),
    bad_file("no model", study(model={"name": None, "options": None}), r"\[model\] needs exactly one of 'name'"),
    bad_file("model path missing", study(model=saved("{tmp}/missing.pt")), r"path '.*missing\.pt' does not exist"),
    bad_file(
        "model path is a folder",
        study(model=saved("{shared}")),
        r"\[model\] path '.*' is a folder, not a saved model",
    ),
    bad_file("model path is text", study(model=saved("{shared}/notes.txt")), r"path '.*notes\.txt' cannot be loaded"),
    bad_file("model is a state_dict", study(model=saved("{shared}/state_dict.pt")), r"holds a OrderedDict, not a torc"),
    bad_file("model is a tensor", study(model=saved("{shared}/tensor.pt")), r"holds a Tensor, not a torch\.nn\.Mod"),
    bad_file(
        "saved model for other input channels",
        study(model=saved("{shared}/rgb.pt")),
        r"the model's forward pass fails on a validation batch of shape \(120, 1, 8, 8\): .*3 channels",
    ),
    bad_file(
        "built-in model for other input channels",
        study(model={"options": "{ width = 4, in_channels = 3 }"}),
        r"the model's forward pass fails on a training batch of shape \(64, 1, 8, 8\): .*3 channels",
    ),
    bad_file(
        "model output is NaN",
        study(model=saved("{shared}/nan_output.pt")),
        r"the model's output on a validation batch of shape \(120, 1, 8, 8\) contains NaN values",
    ),
    bad_file(
        "layer with an infinite weight",
        study(model=saved("{shared}/inf_weight.pt")),
        r"the model's parameter '0\.0\.weight' has non-finite values \(NaN or inf\)",
    ),
    bad_file(
        "labels beyond a saved model's outputs",
        study(model=saved("{shared}/five_outputs.pt")),
        r"validation labels must be integer class indices in \[0, 5\) for a model with 5 outputs, got .*\[0, 9\]",
    ),
    bad_file(
        "labels beyond a built-in model's outputs",
        study(model={"options": "{ width = 4, num_classes = 5 }"}),
        r"training labels must be class indices in \[0, 5\) for a model with 5 outputs, got values in \[0, 9\]",
    ),
    bad_file(
        "trained-model cache folder under a file",
        study(training={"cache_dir": '"{shared}/afile/baselines"'}),
        r"cannot create the trained-model cache folder '.*afile/baselines': Not a directory",
    ),
    # --- user data sets ([data] name = "cifar10", options.root = a folder of batches) ---
    bad_file("data folder missing", study(data=cifar("{tmp}/nowhere")), r"CIFAR-10 folder .*nowhere does not exist"),
    bad_file("data labels 12", study(data=cifar("{shared}/cifar_labels")), r"has labels outside \[0, 10\): 0\.\.12"),
    bad_file("empty data set", study(data=cifar("{shared}/cifar_empty")), r"cifar10: the training split is empty"),
    # --- storage ---
    row("storage scheme foo://", (*RUN, "--storage", "foo://x"), r"cannot open storage 'foo://x': ", file=study()),
    row("storage without a scheme", (*RUN, "--storage", "x.db"), r"storage 'x\.db' is not a \w+ URL", file=study()),
    bad_file("file's storage without scheme", study(study={"storage": '"x.db"'}), r"storage 'x\.db' is not a \w+ URL"),
    row(
        "storage folder under a file",
        (*RUN, "--storage", "sqlite:///{shared}/afile/x.db"),
        r"cannot create the folder for storage 'sqlite:///.*afile/x\.db'",
        file=study(),
    ),
    row(
        "in-memory storage",
        (*RUN, "--storage", "sqlite:///:memory:"),
        r"storage 'sqlite:///:memory:' is in memory",
        file=study(),
    ),
    bad_file(
        "study name taken with other objectives",
        study(study={"name": '"done"', "storage": f'"{DONE}"', "objectives": '["accuracy", "params"]'}),
        r"study 'done' in sqlite:///.*done\.db exists with different objectives: stored \['accuracy', 'macs'\]",
    ),
    # --- command-line budgets ---
    row("--n-trials 0", (*RUN, "--n-trials", "0"), r"--n-trials must be >= 1, got 0", file=study()),
    row("--n-trials negative", (*RUN, "--n-trials", "-3"), r"--n-trials must be >= 1, got -3", file=study()),
    row("--n-trials many", (*RUN, "--n-trials", "many"), r"--n-trials: invalid int value: 'many'", form=USAGE),
    row("--timeout negative", (*RUN, "--timeout", "-1"), r"timeout must be > 0 seconds, got -1", file=study()),
    # --- report ---
    row(
        "report of a storage file that does not exist",
        ("report", "--storage", "sqlite:///{tmp}/missing.db", "--study", "done"),
        r"storage 'sqlite:///.*missing\.db': the file '.*missing\.db' does not exist",
    ),
    row("report of an unknown study", (*REPORT[:4], "nope"), r"no study 'nope' in sqlite:///.*; studies there: 'done'"),
    row(
        "report of a study not made by ranksearch",
        ("report", "--storage", "sqlite:///{shared}/foreign.db", "--study", "foreign"),
        r"study 'foreign' in sqlite:///.*foreign\.db was not made by ranksearch",
    ),
    row("report without a study", REPORT[:3], r"say which study: a study file, or --storage URL --study NAME"),
    row("report file and --study", ("report", "{shared}/done.toml", "--study", "x"), r"give a study file or --storage"),
    row(
        "report --out under a file",
        (*REPORT, "--out", "{shared}/afile/sub"),
        r"cannot create the report folder '.*afile/sub': Not a directory",
    ),
    row(
        "report --out into a read-only folder",
        (*REPORT, "--out", "{shared}/readonly"),
        r"cannot write the report .*readonly.*: Permission denied",
        marks=pytest.mark.skipif(IS_ROOT, reason="root can write into a read-only folder (see the two rows around)"),
    ),
    row(
        "report --out where a file must go is a folder",
        (*REPORT, "--out", "{shared}/clash"),
        r"cannot write the report .*clash.*trials\.csv",
    ),
    row(
        "report --screenshot under a file",
        (*REPORT, "--out", "{tmp}/r", "--screenshot", "{shared}/afile/x.png"),
        r"cannot write the screenshot '.*afile/x\.png'",
    ),
    row("report --screenshot-height 10", (*REPORT, "--screenshot-height", "10"), r"--screenshot-height must be >= 100"),
    # --- export ---
    row(
        "export --trial 99", (*EXPORT, "--trial", "99"), r"study 'done' has no trial 99 \(finished trials are 0\.\.1\)"
    ),
    row("export --trial -1", (*EXPORT, "--trial", "-1"), r"study 'done' has no trial -1"),
    row("export without a rule", EXPORT, r"say which trial: a trial number, a cost cap"),
    row("export --trial and --knee", (*EXPORT, "--trial", "0", "--knee"), r"give either a trial number or a rule"),
    row("export --max-macs 0", (*EXPORT, "--max-macs", "0"), r"max macs must be a number > 0 \(a fraction of the den"),
    row("export --min-accuracy 2", (*EXPORT, "--min-accuracy", "2"), r"no trial reaches accuracy 2\.0000; the best is"),
    row("export --max-latency", (*EXPORT, "--max-latency", "0.5"), r"study 'done' recorded no latency: it cannot be"),
    row("export --epochs -1", (*EXPORT, "--trial", "0", "--epochs", "-1"), r"--epochs must be >= 0, got -1"),
    row(
        "export --out under a file",
        (*EXPORT, "--trial", "0", "--out", "{shared}/afile/sub"),
        r"cannot create the export folder '.*afile/sub': Not a directory",
    ),
    row(
        "export of a study never run",
        ("export", "{file}", "--trial", "0"),
        r"storage 'sqlite:///.*tiny\.db': the file .* does not exist \(no study run there yet\?\)",
        file=study(),
    ),
    # --- layers and demo ---
    row("layers --num-classes 0", ("layers", "--num-classes", "0"), r"model 'resnet20': num_classes must be an int >="),
    row("layers --in-channels -1", ("layers", "--in-channels", "-1"), r"model 'resnet20': in_channels must be an int"),
    row("layers --model vgg", ("layers", "--model", "vgg"), r"argument --model: invalid choice: 'vgg'", form=USAGE),
    row(
        "demo --input-shape the model cannot take",
        ("demo", "--input-shape", "1,1,32,32", "--config", "{shared}/empty.json"),
        r"the model's forward pass failed on an input of shape \(1, 1, 32, 32\)",
    ),
    row("demo --input-shape 1,x", ("demo", "--input-shape", "1,x"), r"expected comma-separated ints", form=USAGE),
    row("demo --config not JSON", ("demo", "--config", "{shared}/notes.txt"), r"malformed compression config JSON"),
    row(
        "demo --save-config under a file",
        ("demo", "--config", "{shared}/empty.json", "--save-config", "{shared}/afile/c.json"),
        r"cannot write compression config '.*afile/c\.json': Not a directory",
    ),
]


def _make_shared(folder) -> None:
    """The module's shared inputs: a trained baseline, a finished study, broken models and data sets."""
    (folder / "done.toml").write_text(
        study(study={"name": '"done"', "storage": f'"{DONE}"'}).replace("{shared}", str(folder))
    )
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", str(folder / "done.toml"), "--no-report"]) == 0
    optuna.create_study(storage=f"sqlite:///{folder}/foreign.db", study_name="foreign")

    def model(**options) -> nn.Module:
        return small_cnn(**{"in_channels": 1, "num_classes": 10, "width": 4, **options}).eval()

    torch.save(model(num_classes=5), folder / "five_outputs.pt")
    torch.save(model(in_channels=3), folder / "rgb.pt")
    torch.save(nn.Sequential(model(), nn.Threshold(1e9, float("nan"))), folder / "nan_output.pt")  # finite weights
    broken = model()
    with torch.no_grad():
        broken[0][0].weight[0, 0, 0, 0] = float("inf")
    torch.save(broken, folder / "inf_weight.pt")
    torch.save(model().state_dict(), folder / "state_dict.pt")
    torch.save(torch.zeros(3), folder / "tensor.pt")
    (folder / "notes.txt").write_text("not a model, not JSON\n")
    (folder / "afile").write_text("a file where a folder is expected\n")
    (folder / "empty.json").write_text('{"layers": {}}\n')
    (folder / "readonly").mkdir(mode=0o555)
    (folder / "clash" / "trials.csv").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count, top_label in (("cifar_ok", 20, 9), ("cifar_empty", 0, 9), ("cifar_labels", 20, 12)):
        (folder / name).mkdir()
        for batch in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
            labels = np.minimum(np.arange(count), top_label).astype(np.int64)
            data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
            with (folder / name / batch).open("wb") as handle:
                pickle.dump({b"data": data, b"labels": labels}, handle)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    _make_shared(folder)
    return folder


@pytest.mark.parametrize(("argv", "file", "code", "form", "message"), CASES)
def test_hostile_input_exits_2_with_a_clear_message(argv, file, code, form, message, shared, tmp_path, capsys):
    def fill(text: str) -> str:
        for name, value in (("file", tmp_path / "study.toml"), ("tmp", tmp_path), ("shared", shared)):
            text = text.replace(f"{{{name}}}", str(value))
        return text

    if isinstance(file, bytes):
        (tmp_path / "study.toml").write_bytes(file)
    elif file is not None:
        (tmp_path / "study.toml").write_text(fill(file))
    try:
        status = main([fill(arg) for arg in argv])
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    err = capsys.readouterr().err
    assert TRACEBACK not in err
    assert status == code, err
    if form == USAGE:
        assert err.startswith("usage: ranksearch") and re.search(r"^ranksearch \w+: error: ", err, re.MULTILINE), err
    else:
        assert err.startswith(ERROR), err
    assert re.search(message, err), err
