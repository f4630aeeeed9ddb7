"""ranksearch: find per-layer low-rank decompositions that trade accuracy against cost.

The core API::

    import ranksearch as rs
    rs.compressible_layers(model)     # name -> LayerInfo (methods, max ranks)
    rs.skipped_layers(model)          # name -> reason
    cfg = rs.CompressionConfig({"conv1": ("tucker2", (16, 8)), "fc": ("svd", 32)})
    small = rs.apply(model, cfg)      # a compressed copy
    rs.count(small, input_shape=(1, 3, 32, 32))   # MACs, params, per-layer table
    search = rs.RankSearch(model, train_loader, val_loader, objectives=("accuracy", "macs"))
    search.optimize(n_trials=50); search.pareto_front()
    search.figures(); search.report("runs/my-study")   # plotly figures; tables + HTML dashboard
    choice = search.choose(max_costs={"macs": 0.5})      # or trial=, min_accuracy=, knee=True
    search.export("runs/my-model", max_costs={"macs": 0.5}, epochs=3)   # rebuild, fine-tune, save
    rs.save("model.pt", small, cfg, model); rs.load("model.pt", base_model=model)

Every name is imported on first use, so ``import ranksearch`` (and commands such as ``ranksearch
report``) does not pay for torch, tensorly or Optuna until they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from .cache import FactorCache
    from .calibration import Calibration, calibrate
    from .compress import apply
    from .config import CompressionConfig
    from .costs import CostReport, compare, count
    from .decompositions import Decomposition, FactorizedLayer, available_methods, get_method
    from .errors import ConfigError, RanksearchError, UnsupportedLayerError
    from .evaluator import Evaluator, EvaluatorSettings
    from .layers import LayerInfo, compressible_layers, skipped_layers
    from .saving import load, save
    from .space import SearchSpace
    from .study import RankSearch

_WHERE = {
    "BatchAdapter": "adapters",
    "UnpackedMultiheadAttention": "attention",
    "unpack_attention": "attention",
    "apply": "compress",
    "FactorCache": "cache",
    "Calibration": "calibration",
    "calibrate": "calibration",
    "CompressionConfig": "config",
    "CostReport": "costs",
    "compare": "costs",
    "count": "costs",
    "Decomposition": "decompositions",
    "FactorizedLayer": "decompositions",
    "available_methods": "decompositions",
    "get_method": "decompositions",
    "ConfigError": "errors",
    "RanksearchError": "errors",
    "UnsupportedLayerError": "errors",
    "Evaluator": "evaluator",
    "EvaluatorSettings": "evaluator",
    "LayerInfo": "layers",
    "compressible_layers": "layers",
    "skipped_layers": "layers",
    "load": "saving",
    "save": "saving",
    "SearchSpace": "space",
    "RankSearch": "study",
}

__all__ = sorted([*_WHERE, "__version__"])


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module 'ranksearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
