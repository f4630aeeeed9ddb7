"""A study file's loaders, dense model and evaluator, built once the way ``ranksearch run`` builds them.

The scripts that measure one config at a time (``final_finetune.py``, ``heldout_check.py``, ``stage_tilt.py``)
start from this, so each measures with the evaluator a search of that study would use.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ranksearch.evaluator import Evaluator
from ranksearch.runner import StudyData, load_data, load_model
from ranksearch.studyfile import StudyFile, load_study_file


@dataclass
class StudySetup:
    study_file: StudyFile
    data: StudyData
    model: nn.Module  # the dense model, trained on first use and cached
    evaluator: Evaluator


def study_setup(path: str) -> StudySetup:
    """The study file at ``path``, its data, its dense model and an evaluator with its ``[evaluator]`` settings."""
    study_file = load_study_file(path)
    data = load_data(study_file)
    model = load_model(study_file, data.splits)
    evaluator = Evaluator(model, data.train_loader, data.val_loader, study_file.evaluator)
    return StudySetup(study_file, data, model, evaluator)
