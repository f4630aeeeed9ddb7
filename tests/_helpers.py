"""Plain helpers that test modules import at collection time (parametrize lists), where fixtures cannot
serve: the layer geometries every method must preserve, the registry-driven (method, case) pairs, and the
tiny study file the command-line tests run.

Test modules import this module, never each other (tests/ is on sys.path: pytest's prepend import mode).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ranksearch.decompositions import Decomposition, InputStatistics, Rank, available_methods, get_method
from ranksearch.decompositions._modules import is_linear_like, linear_dims

# (constructor kwargs, input spatial size): strides, paddings (int, tuple, 'same', 'valid'),
# padding modes, dilation, rectangular and even kernels, with and without bias.
CONV_CASES = {
    "3x3": (dict(in_channels=6, out_channels=8, kernel_size=3, padding=1), (9, 11)),
    "rect-stride-bias": (
        dict(in_channels=8, out_channels=6, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), bias=True),
        (10, 9),
    ),
    "same-dilated-reflect": (
        dict(in_channels=5, out_channels=7, kernel_size=3, padding="same", dilation=2, padding_mode="reflect"),
        (9, 8),
    ),
    "same-even-kernel": (dict(in_channels=4, out_channels=6, kernel_size=(2, 4), padding="same"), (7, 9)),
    "valid-stride2": (dict(in_channels=6, out_channels=6, kernel_size=3, stride=2, padding="valid"), (11, 10)),
    "circular": (dict(in_channels=6, out_channels=5, kernel_size=3, padding=1, padding_mode="circular"), (8, 8)),
    "replicate-dilated": (
        dict(
            in_channels=7,
            out_channels=6,
            kernel_size=(3, 2),
            padding=(2, 1),
            dilation=(2, 1),
            padding_mode="replicate",
            bias=True,
        ),
        (9, 9),
    ),
}
LINEAR_CASES = {
    "linear-bias": (dict(in_features=12, out_features=20), (3, 12)),
    "linear-nobias-3d": (dict(in_features=30, out_features=8, bias=False), (2, 4, 30)),
}
CASES = (*CONV_CASES, *LINEAR_CASES)


def make_layer(case: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, torch.Tensor]:
    """A seeded layer of the named case and a seeded input for it."""
    torch.manual_seed(seed)
    if case in CONV_CASES:
        kwargs, hw = CONV_CASES[case]
        kwargs = {"bias": False, **kwargs}
        layer = nn.Conv2d(**kwargs, dtype=dtype)
        x = torch.randn(2, kwargs["in_channels"], *hw, dtype=dtype)
    else:
        kwargs, shape = LINEAR_CASES[case]
        layer = nn.Linear(**kwargs, dtype=dtype)
        x = torch.randn(*shape, dtype=dtype)
    if layer.bias is not None:
        with torch.no_grad():
            layer.bias.normal_()
    return layer, x


def supported_cases(method: str | Decomposition) -> list[str]:
    """The cases whose layer ``method`` can compress, in :data:`CASES` order."""
    method = get_method(method)
    return [case for case in CASES if method.unsupported_reason(make_layer(case)[0]) is None]


def method_case_pairs() -> list[tuple[str, str]]:
    """Every (registered method, supported case): read from the registry each time it is called."""
    return [(method, case) for method in available_methods() for case in supported_cases(method)]


def anisotropic_statistics(layer: nn.Module, seed: int = 0, decades: float = 3.0) -> InputStatistics:
    """Seeded input statistics fitting ``layer``: a second moment whose eigenvalues fall over ``decades``
    orders of magnitude along random directions (per group), as pretrained layers' inputs do."""
    groups, dim = (1, linear_dims(layer)[1]) if is_linear_like(layer) else (layer.groups, layer.weight[0].numel())
    generator = torch.Generator().manual_seed(seed)
    moments = []
    for _ in range(groups):
        basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        moments.append((basis * torch.logspace(0, -decades, dim, dtype=torch.float64)) @ basis.T)
    return InputStatistics(torch.stack(moments), samples=1000)


def statistics_if_needed(method: Decomposition, layer: nn.Module) -> InputStatistics | None:
    """:func:`anisotropic_statistics` for a data-aware method, None for a plain one."""
    return anisotropic_statistics(layer) if get_method(method).data_aware else None


def calibration_if_needed(method: str | Decomposition, model: nn.Module, example: torch.Tensor) -> object:
    """``ranksearch.calibrate`` of ``model`` on one batch ``example`` for a data-aware method, else None."""
    if not get_method(method).data_aware:
        return None
    import ranksearch as rs  # the package root imports lazily; keep it out of collection for plain methods

    return rs.calibrate(model, [example], batches=1)


def mid_rank(method: Decomposition, layer: nn.Module) -> Rank:
    """A rank about half of the maximum in every component."""
    top = method.max_rank(layer)
    return max(1, top // 2) if isinstance(top, int) else tuple(max(1, r // 2) for r in top)


TINY_STUDY = """
[study]
name = "tiny"
storage = "sqlite:///{tmp}/tiny.db"
n_trials = 4
[model]
{model}
[data]
name = "digits"
options = {{ image_size = 8 }}
batch_size = 32
eval_batch_size = 120
[training]
epochs = 1
cache_dir = "{tmp}/baselines"
[space]
rank_fractions = [0.25, 0.5]
[evaluator]
finetune_steps = 2
bn_batches = 1
eval_batches = 1
"""


def write_study(folder: Path, model: str = 'name = "small_cnn"\noptions = { width = 4 }') -> Path:
    """Write ``folder/tiny.toml``, a 4-trial study of a small CNN on 8x8 digits storing into ``folder``
    (``model`` is the ``[model]`` table's body), and return its path."""
    path = Path(folder) / "tiny.toml"
    path.write_text(TINY_STUDY.format(tmp=folder, model=model))
    return path
