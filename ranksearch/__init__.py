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
    rs.save("model.pt", small, cfg, model); rs.load("model.pt", base_model=model)

``RankSearch`` is the only part that needs Optuna; it is imported on first use.
"""

from __future__ import annotations

from ._version import __version__
from .apply import apply
from .cache import FactorCache
from .config import CompressionConfig
from .costs import CostReport, compare, count
from .decompositions import Decomposition, FactorizedLayer, available_methods, get_method
from .errors import ConfigError, RanksearchError, UnsupportedLayerError
from .evaluator import Evaluator, EvaluatorSettings
from .layers import LayerInfo, compressible_layers, skipped_layers
from .saving import load, save
from .space import SearchSpace

__all__ = [
    "CompressionConfig",
    "ConfigError",
    "CostReport",
    "Decomposition",
    "Evaluator",
    "EvaluatorSettings",
    "FactorCache",
    "FactorizedLayer",
    "LayerInfo",
    "RankSearch",
    "RanksearchError",
    "SearchSpace",
    "UnsupportedLayerError",
    "__version__",
    "apply",
    "available_methods",
    "compare",
    "compressible_layers",
    "count",
    "get_method",
    "load",
    "save",
    "skipped_layers",
]


def __getattr__(name: str) -> object:
    if name == "RankSearch":  # the Optuna edge, imported only when asked for
        from .study import RankSearch

        return RankSearch
    raise AttributeError(f"module 'ranksearch' has no attribute {name!r}")
