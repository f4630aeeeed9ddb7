"""The command line: the README's demo, the layer listing, and clear errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ranksearch.cli import DEFAULT_DEMO_CONFIG, main

ROOT = Path(__file__).resolve().parents[1]


def test_demo_prints_the_cost_table_and_saves_the_config(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    saved = tmp_path / "cfg.json"
    assert main(["demo", "--save-config", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "15 layers factorized" in out and "FLOPs = 2 x MACs" in out
    assert "layers.1.1.conv2      tt (16, 24, 16)" in out
    assert "compressed: 21,963,344 MACs (54.2%), 112,298 params (41.6%)" in out
    assert json.loads(saved.read_text()) == json.loads((ROOT / DEFAULT_DEMO_CONFIG).read_text())


def test_layers_lists_methods_and_max_ranks(capsys):
    assert main(["layers", "--model", "small_cnn", "--in-channels", "1"]) == 0
    out = capsys.readouterr().out
    assert "small_cnn: 5 compressible layers" in out and "0 skipped layers" in out
    assert "(128, 32)" in out  # tt bond caps of the 2048 -> 256 Linear


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--config", "missing.json"], "cannot read compression config 'missing.json'"),
        (["demo", "--model", "small_cnn"], "unknown layer 'layers.0.0.conv1'"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ranksearch: error: ") and message in err and err.count("\n") == 1


def test_bad_arguments_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--input-shape", "1,x"])
    assert exit_info.value.code == 2
    assert "expected comma-separated ints" in capsys.readouterr().err


def test_console_script_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "ranksearch.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("ranksearch ")


def test_core_does_not_import_optuna():
    code = "import sys, ranksearch, ranksearch.cli; print('optuna' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
