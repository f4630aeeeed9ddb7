"""FactorCache: decompose each layer once, serve every (method, rank) variant from memory.

Keys are built from the weight's *content* (a BLAKE2 digest of its bytes, with its shape, dtype and
device) and the method's settings, never from a layer name or an object id, so the cache cannot serve
factors of a different weight: a fine-tuned or reloaded weight is a new key. Hashing costs one pass
over the weight; it is memoized per tensor and redone when the tensor is modified in place (its
version counter moves) or replaced (its storage moves).

For nested methods (SVD, Tucker-2) one rank-independent result is stored and every rank is a slice of
it (a view: no copy, no memory). Fitted methods (CP, TT) store one result per rank; their
rank-independent work, if any (a data-aware Tucker-2's HOSVD and whitening), is stored once too.

Data-aware methods also take the layer's :class:`~ranksearch.decompositions.InputStatistics`; their
digest joins the key, so a layer calibrated on other data is a new key.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from .decompositions import Decomposition, Factors, InputStatistics, Rank, get_method, relative_error
from .errors import ConfigError, RanksearchError

__all__ = ["CacheStats", "FactorCache", "weight_digest"]


def weight_digest(weight: torch.Tensor) -> str:
    """BLAKE2b digest of a tensor's shape, dtype and bytes (device-independent)."""
    data = weight.detach().contiguous().cpu()
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{tuple(data.shape)}|{data.dtype}".encode())
    h.update(data.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


@dataclass
class CacheStats:
    """Counters of a :class:`FactorCache`: hits, misses and seconds spent decomposing."""

    hits: int = 0
    misses: int = 0
    seconds: float = 0.0


class FactorCache:
    """Memoized factorizations of layer weights, for many (layer, method, rank) requests.

    Example::

        cache = rs.FactorCache()
        small = rs.apply(model, config, cache=cache)      # decomposes
        other = rs.apply(model, config2, cache=cache)     # slices what it can from the first call

    The cache holds tensors on the weights' devices and grows until :meth:`clear`.
    """

    def __init__(self) -> None:
        self._prepared: dict[tuple, object] = {}
        self._factors: dict[tuple, Factors] = {}
        self._errors: dict[tuple, float] = {}
        self._digests: dict[int, tuple[weakref.ref, int, int, str]] = {}
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._prepared) + len(self._factors)

    def clear(self) -> None:
        """Drop every stored result (the statistics are kept)."""
        self._prepared.clear()
        self._factors.clear()
        self._errors.clear()
        self._digests.clear()

    def _digest(self, weight: torch.Tensor) -> str:
        entry = self._digests.get(id(weight))
        if entry is not None:
            ref, version, pointer, digest = entry
            if ref() is weight and version == weight._version and pointer == weight.data_ptr():
                return digest
        digest = weight_digest(weight)
        self._digests[id(weight)] = (weakref.ref(weight), weight._version, weight.data_ptr(), digest)
        return digest

    def _key(self, module: nn.Module, method: Decomposition, statistics: InputStatistics | None) -> tuple:
        weight = module.weight
        key = (method.name, method.cache_token(), str(weight.device), self._digest(weight))
        if not method.data_aware:
            return key
        if statistics is None:
            raise ConfigError(
                f"method {method.name!r} is data-aware: it needs the statistics of the layer's inputs "
                "(pass calibration=ranksearch.calibrate(model, loader) to apply / RankSearch / Evaluator, "
                "or add a [calibration] section to the study file)"
            )
        return (*key, statistics.digest)

    def factors(
        self, module: nn.Module, method: str | Decomposition, rank: Rank, statistics: InputStatistics | None = None
    ) -> Factors:
        """The factors of ``module``'s weight by ``method`` at ``rank``.

        ``rank`` is validated and put in canonical form first (so ``8`` and ``(8, 8)`` for Tucker-2 are
        one entry, and a bad rank is a :class:`ConfigError`). A data-aware method needs the layer's
        ``statistics`` (a :class:`ConfigError` says so otherwise); plain methods ignore them. Callers must
        not modify the returned tensors in place: they may be views into the cache.
        """
        method = get_method(method)
        rank = method.canonical_rank(module, rank)
        key = self._key(module, method, statistics)
        prepared = self._prepared.get(key)
        if method.nested or method.data_aware:
            if prepared is None:
                args = (module, statistics) if method.data_aware else (module,)
                prepared = self._timed(lambda: method.prepare(*args))
                self._prepared[key] = prepared
            elif method.nested:
                self.stats.hits += 1
        if method.nested:
            return method.factorize(module, rank, prepared)
        full_key = (*key, rank)
        factors = self._factors.get(full_key)
        if factors is None:
            factors = self._timed(
                lambda: method.factorize(module, rank, method.prepare(module) if prepared is None else prepared)
            )
            self._factors[full_key] = factors
        else:
            self.stats.hits += 1
        return factors

    def relative_error(
        self, module: nn.Module, method: str | Decomposition, rank: Rank, statistics: InputStatistics | None = None
    ) -> float:
        """``||W - W_rank|| / ||W||`` of the factorization served by :meth:`factors` (memoized)."""
        method = get_method(method)
        rank = method.canonical_rank(module, rank)
        key = (*self._key(module, method, statistics), rank)
        if key not in self._errors:
            approx = method.reconstruct(module, self.factors(module, method, rank, statistics))
            self._errors[key] = relative_error(module.weight, approx)
        return self._errors[key]

    def _timed(self, compute):
        start = time.perf_counter()
        with torch.no_grad():
            result = compute()
        self.stats.seconds += time.perf_counter() - start
        self.stats.misses += 1
        _check_finite(result)
        return result


def _check_finite(result: object) -> None:
    tensors = result if isinstance(result, tuple) else ()
    for t in tensors:
        if isinstance(t, torch.Tensor) and not torch.isfinite(t).all():
            raise RanksearchError("decomposition produced non-finite factors (is the weight finite?)")
