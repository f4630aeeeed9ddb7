"""The baselines at a set of MACs budgets: the warm starts ``[study] warm_start_heuristics`` asks for."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from torch import nn

from ..cache import FactorCache
from ..config import CompressionConfig
from ..errors import RanksearchError
from ._allocation import error_balanced_config
from ._uniform import uniform_config
from ._vbmf import vbmf_config

__all__ = ["heuristic_configs"]


def heuristic_configs(
    model: nn.Module, input_shape: Sequence[int], budgets: Sequence[float], *, cache: FactorCache | None = None
) -> list[tuple[str, float | None, CompressionConfig]]:
    """``(name, budget, config)`` for uniform and error-balanced SVD / Tucker-2 at each MACs budget (a
    fraction of dense), and VBMF Tucker-2 once (budget None). A baseline that cannot meet a budget, or does
    not apply to the model, is left out.

    On the digits study these as warm starts raised the search's hypervolume on every seed
    (``benchmarks/RESULTS.md``).
    """
    cache = cache or FactorCache()
    found: list[tuple[str, float | None, CompressionConfig]] = []
    for budget in budgets:
        for method in ("tucker2", "svd"):
            for name, make, options in (
                ("uniform", uniform_config, {"cost_fraction": budget}),
                ("error-balanced", error_balanced_config, {"budget": budget, "cache": cache}),
            ):
                try:
                    config = make(model, input_shape=input_shape, method=method, **options)
                except RanksearchError:
                    continue  # not reachable at this budget, or no layer takes the method
                found.append((f"{name} {method}", budget, config))
    with contextlib.suppress(RanksearchError):  # no layer takes Tucker-2 (a Linear-only model)
        found.append(("vbmf tucker2", None, vbmf_config(model, method="tucker2")))
    return found
