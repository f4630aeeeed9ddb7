"""The zoo matrix (docs/ZOO.md) as tests: real torchvision, timm and transformers models, built without
downloads, through listing, full-rank exactness, a uniform 50%-MACs config and save/load.

The packages are the optional ``zoo`` extra (``pip install -c constraints-zoo.txt -e '.[zoo]'``); without
one, its models are skipped with that hint and this file costs nothing. When torchvision or timm is
installed, a default subset of their models runs; ``RANKSEARCH_ZOO=full`` runs every torchvision
classification model and all the timm families of the matrix. The checks themselves live in
``tests/_zoo_models.py``, shared with ``benchmarks/zoo_matrix.py``, which writes the table in docs/ZOO.md.
"""

from __future__ import annotations

import os

import pytest
from _zoo_models import (  # tests/ is on sys.path (pytest's prepend import mode)
    ZooCase,
    cases,
    check_model,
    import_problem,
    known_issue,
    problems,
)

FULL = os.environ.get("RANKSEARCH_ZOO", "").strip().lower() == "full"
HEAVY = ("torchvision", "timm")  # seconds per model: also marked slow


def _param(case: ZooCase, *, onnx: bool = False) -> object:
    """``case`` as a parameter: slow when heavy (or exporting), expected to fail where ranksearch is known to
    (strict: a fix makes the test say so)."""
    marks = [pytest.mark.slow] if onnx or case.library in HEAVY else []
    issue = known_issue(case, onnx=onnx)
    if issue:
        marks.append(pytest.mark.xfail(strict=True, raises=AssertionError, reason=issue))
    return pytest.param(case, id=case.id, marks=marks)


def _not_run() -> list[object]:
    """One skipped entry per library whose full sweep is not run, saying how to run it."""
    if FULL:
        return []
    return [
        pytest.param(
            None,
            id=f"{library}/full-sweep",
            marks=pytest.mark.skip(reason=f"opt-in: RANKSEARCH_ZOO=full runs every {library} model of the matrix"),
        )
        for library in HEAVY
    ]


@pytest.mark.parametrize("case", [*map(_param, cases(full=FULL)), *_not_run()])
def test_zoo_model(case, tmp_path):
    problem = import_problem(case.library)
    if problem:
        pytest.skip(problem)
    result = check_model(case, tmp_path)
    assert problems(result) == [], case.id


@pytest.mark.parametrize("case", [_param(c, onnx=True) for c in cases(full=False, libraries=("transformers",))])
def test_zoo_onnx_export(case, tmp_path):
    problem = import_problem(case.library)
    if problem:
        pytest.skip(problem)
    result = check_model(case, tmp_path, onnx=True)
    if result.onnx == "onnx extra not installed":
        pytest.skip("ONNX export needs the onnx extra: pip install 'ranksearch[onnx]'")
    assert result.errors == {}
    assert result.onnx.startswith("ok ("), result.onnx
