"""Exact MAC and parameter counts of a model for one input shape (or example input), per layer and in total.

What is counted: MACs (multiply-accumulates; one multiply-add = 1 MAC, FLOPs = 2 x MACs) of every
convolution and Linear module call, of Hugging Face's ``Conv1D`` (GPT-2's projections, a Linear with its
weight stored transposed), and of modules that declare their own count with a
``count_macs(input_shape)`` method (ranksearch's ``TTMatrixLinear``). Bias additions, normalization,
activations, pooling and functional ops (e.g. attention's matmuls) are not counted: they are the same
in the dense and the compressed model. This equals ``FlopCounterMode``'s count / 2 on conv/linear
models, and fvcore's count without its BatchNorm term. Parameters are every unique parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import prod

import pandas as pd
import torch
from torch import nn

from .adapters import describe
from .attention import searchable_view
from .decompositions import FactorizedLayer
from .tracing import InputShape, ModuleCall, is_shape, trace_calls

__all__ = ["CostReport", "compare", "count"]

COLUMNS = ["layer", "type", "method", "rank", "input_shape", "output_shape", "macs", "params"]


def module_macs(module: nn.Module, input_shape: Sequence[int], output_shape: Sequence[int]) -> int:
    """MACs of one call of a leaf module, 0 for modules that are not counted (see module docs)."""
    if hasattr(module, "count_macs"):
        return int(module.count_macs(input_shape))
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return prod(input_shape) * (module.out_channels // module.groups) * prod(module.kernel_size)
    if isinstance(module, nn.modules.conv._ConvNd):
        return prod(output_shape) * (module.in_channels // module.groups) * prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return prod(input_shape) * module.out_features
    if _is_hf_conv1d(module):  # weight (nx, nf): rows x nx x nf
        nx, nf = module.weight.shape
        return prod(input_shape[:-1]) * nx * nf
    return 0


def _is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``transformers.pytorch_utils.Conv1D`` (duck-typed: transformers is not a dependency)."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and weight.shape[1] == module.nf
    )


@dataclass(frozen=True)
class CostReport:
    """Cost of a model for one input shape.

    Attributes:
        macs: total multiply-accumulates of one forward pass on ``input_shape``.
        params: number of unique parameters.
        table: one row per dense layer or factorized layer (columns ``layer, type, method, rank,
            input_shape, output_shape, macs, params``), in call order.
        input_shape: the input shape the MACs are counted for (batch included); for an example input, its
            shapes (:func:`ranksearch.adapters.describe`: a list for a tuple, a dict for a dict).
    """

    macs: int
    params: int
    table: pd.DataFrame
    input_shape: tuple[int, ...] | list | dict

    @property
    def flops(self) -> int:
        """FLOPs, counting a multiply-add as two operations."""
        return 2 * self.macs

    def __str__(self) -> str:
        return (
            f"{self.macs:,} MACs ({self.flops:,} FLOPs), {self.params:,} params for input {self.input_shape}\n"
            + self.table.to_string(index=False)
        )


def _unit_of(name: str, factorized: Sequence[str]) -> str:
    for prefix in factorized:
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return name


def count(model: nn.Module, input_shape: InputShape, *, dtype: torch.dtype | None = None) -> CostReport:
    """Count MACs and parameters of ``model`` on a zero input of ``input_shape`` (batch included).

    ``input_shape`` may also be an example input, for models not called with one tensor: a tuple or list
    of tensors (``model(*inputs)``) or a dict of tensors (``model(**inputs)``, e.g. a Hugging Face
    model's ``input_ids`` and ``attention_mask``), e.g. the first validation batch cut to one sample.

    Runs one forward pass under ``torch.no_grad()`` with the model in eval mode (its train/eval
    state is restored), on the device and dtype of its first parameter unless ``dtype`` is given
    (see :func:`~ranksearch.tracing.trace_calls`). An ``nn.MultiheadAttention`` runs its projections as
    functions, not modules: it is counted as its unpacked equivalent (:func:`~ranksearch.attention.searchable_view`),
    so its q/k/v/out projections are in the count, as they are in a compressed copy.
    """
    given_shape = is_shape(input_shape)
    shape = tuple(int(s) for s in input_shape) if given_shape else input_shape
    traced = searchable_view(model)  # shares the weights; the model itself when it has no attention to unpack
    leaves = [name for name, m in traced.named_modules() if not list(m.children()) or hasattr(m, "count_macs")]
    calls = trace_calls(traced, shape, leaves, dtype=dtype)
    table = _layer_table(traced, calls)
    params = sum(p.numel() for p in model.parameters())
    described = shape if given_shape else describe(input_shape)
    return CostReport(macs=int(table["macs"].sum()), params=params, table=table, input_shape=described)


def _layer_table(model: nn.Module, calls: Sequence[ModuleCall]) -> pd.DataFrame:
    """One row per dense or factorized layer with MACs or parameters, in call order (columns ``COLUMNS``).

    A factorized layer's row sums the calls of its inner modules; its parameters are counted once.
    """
    factorized = [name for name, m in model.named_modules() if isinstance(m, FactorizedLayer)]
    rows: dict[str, dict] = {}
    counted: set[int] = set()
    for call in calls:
        unit = _unit_of(call.name, factorized)
        row = rows.get(unit)
        if row is None:
            unit_module = model.get_submodule(unit) if unit else model
            row = rows[unit] = _new_row(unit, unit_module, call, counted)
        row["macs"] += module_macs(call.module, call.input_shape, call.output_shape)
        row["output_shape"] = call.output_shape
    return pd.DataFrame([r for r in rows.values() if r["macs"] or r["params"]], columns=COLUMNS).astype(
        {"macs": "int64", "params": "int64"}
    )


def _new_row(unit: str, module: nn.Module, first_call: ModuleCall, counted: set[int]) -> dict:
    """The row of layer ``unit`` (``module``) at its first call, MACs not yet added.

    Its parameters are counted unless ``module`` already is in ``counted`` (ids), which it is added to.
    """
    is_factorized = isinstance(module, FactorizedLayer)
    params = 0 if id(module) in counted else _own_params(module)
    counted.add(id(module))
    return {
        "layer": unit,
        "type": type(module).__name__,
        "method": module.method if is_factorized else "dense",
        "rank": module.rank if is_factorized else None,
        "input_shape": first_call.input_shape,
        "output_shape": first_call.output_shape,
        "macs": 0,
        "params": params,
    }


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def compare(before: CostReport, after: CostReport) -> pd.DataFrame:
    """Layer-by-layer MACs/params of two reports of the same model (e.g. dense vs compressed).

    Rows are the layers with MACs (convolutions, Linear, factorized layers) in the order of
    ``before``; the totals are over the whole models (parameters of normalization layers included).

    Returns columns ``layer, method, rank, macs_before, macs_after, macs_ratio, params_before,
    params_after, params_ratio``, with a final ``TOTAL`` row.
    """
    left = before.table.loc[before.table["macs"] > 0, ["layer", "macs", "params"]]
    right = after.table.loc[after.table["macs"] > 0, ["layer", "method", "rank", "macs", "params"]]
    table = left.merge(right, on="layer", how="left", suffixes=("_before", "_after"))
    only_after = right[~right["layer"].isin(left["layer"])].rename(
        columns={"macs": "macs_after", "params": "params_after"}
    )
    table = pd.concat([table, only_after]).fillna({"method": "dense"}).set_index("layer")
    total = pd.DataFrame(
        {
            "macs_before": [before.macs],
            "params_before": [before.params],
            "method": [""],
            "rank": [None],
            "macs_after": [after.macs],
            "params_after": [after.params],
        },
        index=pd.Index(["TOTAL"], name="layer"),
    )
    table = pd.concat([table, total])
    counts = ["macs_before", "macs_after", "params_before", "params_after"]
    table[counts] = table[counts].astype("Int64")
    for what in ("macs", "params"):
        table[f"{what}_ratio"] = (table[f"{what}_after"] / table[f"{what}_before"]).round(4)
    order = [
        "method",
        "rank",
        "macs_before",
        "macs_after",
        "macs_ratio",
        "params_before",
        "params_after",
        "params_ratio",
    ]
    return table[order].reset_index()
