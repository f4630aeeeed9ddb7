"""The shape of the tree, kept: small modules and functions, Optuna only at the edge, tests that do not
import each other, lazy imports where a command needs little."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ranksearch"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_module_is_too_long():
    lines = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in python_files(PACKAGE)}
    long = {name: n for name, n in lines.items() if n > MAX_MODULE_LINES}
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: split them"


@pytest.mark.parametrize("folder", ["ranksearch", "tests"])
def test_no_function_is_too_long(folder):
    long = []
    for path in python_files(ROOT / folder):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines"


def test_only_the_study_package_imports_optuna():
    importers = [
        str(p.relative_to(ROOT))
        for p in python_files(PACKAGE)
        if any(m == "optuna" or m.startswith("optuna.") for m in imported_modules(p)) and "study" not in p.parts
    ]
    assert importers == []


def test_test_modules_do_not_import_each_other():
    importers = [
        p.name for p in python_files(ROOT / "tests") if any(m.startswith("test_") for m in imported_modules(p))
    ]
    assert importers == [], "shared test helpers go in conftest.py or tests/_helpers.py"


def test_nothing_points_outside_the_repository():
    files = [*python_files(PACKAGE), ROOT / "pyproject.toml", ROOT / "README.md"]
    outside = [str(p.relative_to(ROOT)) for p in files if "../shared" in p.read_text()]
    assert outside == [], "users have no ../shared: link to files inside the repository"


def test_reading_a_stored_study_imports_neither_torch_nor_tensorly():
    code = (
        "import sys\n"
        "from ranksearch.cli import _parser\n"
        "from ranksearch.study import load_results\n"
        "from ranksearch.report import write_report\n"
        "from ranksearch.studyfile import load_study_section\n"
        "_parser()\n"
        "print(sorted(m for m in ('torch', 'tensorly', 'scipy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
