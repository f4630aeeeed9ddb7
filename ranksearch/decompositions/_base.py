"""The contract every decomposition method fulfils, and the registry that finds them by name.

A method is one module holding one subclass::

    class SVD(Decomposition, name="svd"):
        ...

Defining the class registers an instance under its name; a second class with the same name raises.
The life of a layer through a method, in the order the library calls the hooks:

1. :meth:`Decomposition.unsupported_reason` -- can this method handle the layer at all?
2. :meth:`Decomposition.max_rank` / :meth:`Decomposition.canonical_rank` -- which ranks are valid.
3. :meth:`Decomposition.prepare` -- rank-independent work, done once per weight (an SVD, a HOSVD);
   a data-aware method (:attr:`Decomposition.data_aware`) also receives the statistics of the layer's
   inputs (:class:`~ranksearch.decompositions.InputStatistics`).
4. :meth:`Decomposition.factorize` -- the factors at one rank (a slice of ``prepare`` where the
   maths allows, a fit otherwise); the :class:`~ranksearch.FactorCache` memoizes both steps.
5. :meth:`Decomposition.build` -- the replacement module, made of standard torch layers.
6. :meth:`Decomposition.cost` -- exact MACs and parameters of that module, without building it.

Each method also supplies :meth:`Decomposition.exact_low_rank_example` and declares the class
attributes :attr:`~Decomposition.nested`, :attr:`~Decomposition.exact_at_max_rank` and
:attr:`~Decomposition.exact_recovery_tolerance`: the test suite holds every registered method to the
same contract through them, so a new method needs no test of its own to be covered.
:func:`unregister` removes a method again (for tests and plugins).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Union

import tensorly as tl
import torch
from torch import nn

from ..errors import ConfigError
from ._modules import (  # noqa: F401  (the helpers are re-exported for methods written against _base)
    bias_of,
    bias_params,
    chain_weight,
    conv_unsupported_reason,
    new_conv,
    new_linear,
    weight_of,
)

__all__ = [
    "Cost",
    "Decomposition",
    "FactorizedLayer",
    "Factors",
    "Rank",
    "available_methods",
    "get_method",
    "tensorly_torch",
    "unregister",
]

Rank = Union[int, tuple[int, ...]]
"""A method's rank: an int, or a tuple of ints for methods with several ranks (Tucker-2, TT)."""

Factors = tuple[torch.Tensor, ...]
"""The tensors a method builds its module from, in the method's own order."""

_REGISTRY: dict[str, Decomposition] = {}


@dataclass(frozen=True)
class Cost:
    """Exact inference cost of a module for one input shape.

    Attributes:
        macs: multiply-accumulates (one multiply-add = 1 MAC; FLOPs = 2 x MACs). Biases not counted.
        params: number of parameters (weights and biases).
    """

    macs: int
    params: int

    @property
    def flops(self) -> int:
        """FLOPs, counting a multiply-add as two operations."""
        return 2 * self.macs


class FactorizedLayer(nn.Sequential):
    """The replacement of one Conv1d, Conv2d or Linear layer: a short chain of standard layers.

    It is an ordinary ``nn.Sequential`` (so it trains, scripts and exports to ONNX) that also
    remembers which method and rank made it, for cost tables and reports.

    Code written for the dense layer may read its ``weight`` and ``bias`` (dtype and device probes,
    torch's own fast paths): :attr:`weight` is the dense weight the chain equals and :attr:`bias` the
    last layer's bias. Both are read-only properties, not parameters: the parameters, ``state_dict``
    and the computation stay the factorized ones.

    Args:
        layers: the chain, applied in order.
        method: the method's registered name.
        rank: the rank it was built at.
        weight_transposed: the dense layer stored its weight as ``(in, out)`` (Hugging Face's Conv1D),
            so :attr:`weight` does too.
    """

    __jit_unused_properties__: ClassVar[list[str]] = ["weight", "bias"]  # TorchScript: forward never reads them

    def __init__(self, *layers: nn.Module, method: str, rank: Rank, weight_transposed: bool = False) -> None:
        super().__init__(*layers)
        self.method = method
        self.rank = rank
        self.weight_transposed = weight_transposed

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight this chain equals, in the replaced layer's shape, dtype and device.

        Computed from the factors on every read (it costs one reconstruction: a few kernel compositions
        or one pass of an identity matrix), detached and without gradient. Writing to it changes nothing.
        """
        with torch.no_grad():
            weight = chain_weight(list(self))
        return weight.T if getattr(self, "weight_transposed", False) else weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The last layer's bias (the replaced layer's, trained along with the factors), or None."""
        return getattr(self[-1], "bias", None)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, rank={self.rank!r}"


@contextlib.contextmanager
def tensorly_torch() -> Iterator[None]:
    """Run tensorly on its PyTorch backend in this thread only; the user's backend is restored."""
    with tl.backend_context("pytorch", local_threadsafe=True):
        yield


class Decomposition(ABC):
    """A low-rank factorization of a layer's weight and the module that computes with it.

    Subclasses register themselves by passing ``name=`` in the class statement. Ranks are validated
    by :meth:`canonical_rank` before any other hook sees them, so hooks can trust their ``rank``.
    """

    name: ClassVar[str]
    nested: ClassVar[bool] = False
    """True when every rank is a slice of one rank-independent result of :meth:`prepare`.

    The weight error of a nested method never grows with the rank (per component for tuple ranks); for a
    data-aware one, its output error on the calibration statistics.
    """
    exact_at_max_rank: ClassVar[bool] = True
    """True when :meth:`max_rank` is a complete rank: its factors reproduce the weight up to rounding.

    False when the maximum is a budget cap instead (CP's break-even rank).
    """
    data_aware: ClassVar[bool] = False
    """True when the factors depend on the layer's inputs: :meth:`prepare` then takes a second argument,
    the layer's :class:`~ranksearch.decompositions.InputStatistics` (gathered by
    :func:`ranksearch.calibrate`), and the factor cache keys results by them too. Module, cost and
    ranks are typically a plain method's (the data-aware method subclasses it).
    """
    plain: ClassVar[str | None] = None
    """For a data-aware method, the plain method whose module, cost and ranks it shares (e.g. ``"svd"``)."""
    exact_recovery_tolerance: ClassVar[float] = 1e-9
    """Relative weight error within which :meth:`factorize` recovers a float64 weight that is exactly
    representable at the rank asked for (such as :meth:`exact_low_rank_example`'s). Closed-form methods
    reach rounding error; iterative fits stop at their own tolerance, so they declare a larger one.
    """

    def __init_subclass__(cls, name: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:  # an abstract intermediate class
            return
        if name in _REGISTRY:
            raise RuntimeError(f"a decomposition named {name!r} is already registered ({type(_REGISTRY[name])})")
        cls.name = name
        _REGISTRY[name] = cls()

    # --- what the method supports -------------------------------------------------------------
    @abstractmethod
    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Why this method cannot compress ``module``, or None when it can."""

    @abstractmethod
    def max_rank(self, module: nn.Module) -> Rank:
        """The largest meaningful rank for ``module`` (per component for tuple ranks)."""

    def canonical_rank(self, module: nn.Module, rank: object) -> Rank:
        """Validate ``rank`` for ``module`` and return it in the method's canonical form.

        The default accepts a single int in ``[1, max_rank]``. Raises :class:`ConfigError` with a
        message that the caller prefixes with the layer name.
        """
        return check_int_rank(rank, int(self.max_rank(module)))  # type: ignore[arg-type]

    # --- factorizing ----------------------------------------------------------------------------
    def prepare(self, module: nn.Module) -> object:
        """Rank-independent work on the weight, done once and cached (default: none).

        A :attr:`data_aware` method's ``prepare`` takes ``(module, statistics)`` instead, and must return
        whatever of the statistics :meth:`factorize` needs (it receives only ``prepared``).
        """
        return None

    @abstractmethod
    def factorize(self, module: nn.Module, rank: Rank, prepared: object) -> Factors:
        """The factors of ``module``'s weight at ``rank`` (canonical), on the weight's device."""

    @abstractmethod
    def reconstruct(self, module: nn.Module, factors: Factors) -> torch.Tensor:
        """The dense weight the factors represent, in the layer's own weight layout."""

    @abstractmethod
    def build(self, module: nn.Module, factors: Factors) -> FactorizedLayer:
        """The replacement module. Copies the factors and the bias, keeps device and dtype."""

    @abstractmethod
    def cost(self, module: nn.Module, rank: Rank, input_shape: Sequence[int]) -> Cost:
        """Exact MACs and parameters of :meth:`build`'s module for an input of ``input_shape``."""

    def cache_token(self) -> tuple[object, ...]:
        """Settings that change the factors (seed, tolerance...); part of the factor-cache key."""
        return ()

    # --- a known answer, for the tests ------------------------------------------------------------
    def exact_low_rank_example(self, module: nn.Module, seed: int = 0) -> tuple[torch.Tensor, Rank]:
        """A weight of ``module``'s shape that this method represents exactly, and the rank that does.

        The weight is float64 on the CPU, drawn from a generator seeded with ``seed`` (the global RNG
        is left alone). It is typically :meth:`reconstruct` of random factors at a small rank, so
        :meth:`factorize` at that rank must recover it within :attr:`exact_recovery_tolerance`; the
        test suite checks this for every registered method on every layer it supports. The rank must
        be valid for ``module`` (small layers may need it clipped to :meth:`max_rank`).
        """
        raise NotImplementedError(
            f"decomposition {self.name!r} ({type(self).__qualname__}) does not implement exact_low_rank_example; "
            "every registered method must supply one so that the contract tests can check it recovers "
            "an exact low-rank weight"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def get_method(method: str | Decomposition) -> Decomposition:
    """Look a method up by name (or pass an instance through); unknown names list the valid ones."""
    if isinstance(method, Decomposition):
        return method
    try:
        return _REGISTRY[method]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown method {method!r}; available: {', '.join(available_methods())}") from None


def available_methods() -> tuple[str, ...]:
    """Names of the registered methods, in registration order."""
    return tuple(_REGISTRY)


def unregister(name: str) -> Decomposition:
    """Remove the method registered as ``name`` and return its instance; the name is free again.

    For tests and plugins that register a method for a while (define the class, use it, then
    ``unregister`` it in a ``finally``). Configs, studies and factor caches that name the method
    stop working until it is registered again. An unknown name raises the :func:`get_method` error.
    """
    if not isinstance(name, str):
        raise TypeError(f"unregister takes a method name, got {type(name).__name__}")
    get_method(name)  # the registry's error for an unknown name, listing the valid ones
    return _REGISTRY.pop(name)


# --- helpers shared by the methods ------------------------------------------------------------------


def check_int_rank(rank: object, max_rank: int, what: str = "rank") -> int:
    """``rank`` as an int in ``[1, max_rank]``, or a ConfigError saying what is wrong."""
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ConfigError(f"{what} must be an int, got {rank!r}")
    if not 1 <= rank <= max_rank:
        raise ConfigError(f"{what} {rank} is outside [1, {max_rank}]")
    return rank


def check_rank_tuple(rank: object, max_ranks: Sequence[int], what: str = "rank") -> tuple[int, ...]:
    """Validate a tuple rank against per-component maxima; an int ``r`` means ``min(r, max_i)`` each.

    An int larger than every component's maximum is an error, so typos do not pass silently.
    """
    n = len(max_ranks)
    if isinstance(rank, int) and not isinstance(rank, bool):
        check_int_rank(rank, max(max_ranks), what)
        return tuple(min(rank, m) for m in max_ranks)
    if not isinstance(rank, (tuple, list)) or len(rank) != n:
        raise ConfigError(f"{what} must be an int or a sequence of {n} ints, got {rank!r}")
    return tuple(check_int_rank(r, m, f"{what}[{i}]") for i, (r, m) in enumerate(zip(rank, max_ranks, strict=True)))


def random_float64(seed: int) -> Callable[..., torch.Tensor]:
    """``rand(*shape)``: standard-normal float64 CPU tensors from a generator seeded with ``seed``.

    For :meth:`Decomposition.exact_low_rank_example`; the global RNG is left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)


def relative_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """``||reference - approx||_F / ||reference||_F`` (0 for an all-zero reference matched exactly)."""
    ref = reference.detach().double()
    err = torch.linalg.vector_norm(ref - approx.detach().double())
    norm = torch.linalg.vector_norm(ref)
    return float(err / norm) if norm > 0 else float(err)
