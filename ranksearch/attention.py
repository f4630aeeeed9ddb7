"""Attention made searchable: ``nn.MultiheadAttention`` with its projections as ordinary Linear layers.

``nn.MultiheadAttention`` packs q/k/v in one ``in_proj_weight`` (three bare weights when ``kdim``/``vdim``
differ) and reads ``out_proj.weight`` directly: no projection runs as a module, so none can be replaced.
:class:`UnpackedMultiheadAttention` computes the same function with four Linear modules (same forward,
masks and dropout; ``F.scaled_dot_product_attention`` when no weights are returned).

Layer listings and config resolution work on :func:`searchable_view` (the module tree, sharing every
parameter, attention unpacked), so ``attn.q_proj`` is a layer name like any other;
:func:`ranksearch.compress.replace_module` unpacks an attention module (in the compressed copy) when one
of its projections is replaced; :func:`unpack_attention` unpacks a whole model (for the evaluator). A
module stays packed, with the reason (:func:`unpack_blockers`), when unpacking would change the model: a
subclass, forward hooks, reparametrized weights, or a packed weight shared with another module.

torch's encoder fast path (``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` in eval mode) runs
fused kernels on dense weights: on a compressed layer it would fail or silently compute densely.
:func:`turn_off_fast_paths` keeps the ordinary path around every replaced module (see its docs); outputs
equal the fast path's to rounding, except at padded positions (the nested-tensor path returns zeros there).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .errors import RanksearchError

__all__ = [
    "UnpackedMultiheadAttention",
    "searchable_view",
    "turn_off_fast_paths",
    "unpack_attention",
    "unpack_blockers",
    "unpack_in_place",
]

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


class UnpackedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` Linear modules.

    Arguments and forward are ``nn.MultiheadAttention``'s (see its docs). Build one from an existing module
    with :meth:`from_mha`. ``in_proj_weight`` and ``in_proj_bias`` are None and ``_qkv_same_embed_dim`` is
    False, so torch's fused paths, which read the packed weight, are never taken.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise RanksearchError(
                f"embed_dim must be a positive multiple of num_heads, got embed_dim={embed_dim}, num_heads={num_heads}"
            )
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first, self.add_zero_attn = dropout, batch_first, add_zero_attn
        self._qkv_same_embed_dim = False  # no packed weight: torch's fused paths stay off
        self.register_parameter("in_proj_weight", None)
        self.register_parameter("in_proj_bias", None)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.zeros(1, 1, embed_dim, **factory))
            self.bias_v = nn.Parameter(torch.zeros(1, 1, embed_dim, **factory))
        else:
            self.bias_k = self.bias_v = None

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention, *, views: bool = False) -> UnpackedMultiheadAttention:
        """The module computing exactly what ``mha`` computes, holding ``mha``'s parameters.

        Whole parameters (``out_proj``'s, ``q/k/v_proj_weight`` when separate, ``bias_k``/``bias_v``) are the
        same Parameter objects, so ties to other modules are kept. The packed ``in_proj_weight`` and
        ``in_proj_bias`` are split into new Parameters: copies, or with ``views=True`` views of the packed
        tensors (no memory; for a read-only view of a model). For an independent module, pass a deep copy.
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise RanksearchError(f"from_mha takes an nn.MultiheadAttention, got {type(mha).__name__}")
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            add_bias_kv=mha.bias_k is not None,
            add_zero_attn=mha.add_zero_attn,
            kdim=mha.kdim,
            vdim=mha.vdim,
            batch_first=mha.batch_first,
            device="meta",  # every parameter is replaced below
        )
        if mha._qkv_same_embed_dim:
            weights = [_split(w, views) for w in mha.in_proj_weight.chunk(3)]
        else:
            weights = [mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight]
        biases = [None] * 3 if mha.in_proj_bias is None else [_split(b, views) for b in mha.in_proj_bias.chunk(3)]
        for projection, weight, bias in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases, strict=True):
            projection.weight, projection.bias = weight, bias
        new.out_proj.weight, new.out_proj.bias = mha.out_proj.weight, mha.out_proj.bias
        new.bias_k, new.bias_v = mha.bias_k, mha.bias_v
        return new.train(mha.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``nn.MultiheadAttention.forward``: the attention output and (with ``need_weights``) its weights."""
        batched = self._check_inputs(query, key, value)
        if self.batch_first and batched:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))  # (L, N, E)
        if not batched:
            query, key, value = (x.unsqueeze(1) for x in (query, key, value))  # (L, 1, E)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        key_padding_mask = _float_mask(key_padding_mask, "key_padding_mask", query.dtype)
        if is_causal and attn_mask is None:
            raise RanksearchError("is_causal=True needs attn_mask (the causal mask it hints at), as in torch")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # scaled_dot_product_attention applies the causal mask itself
        else:
            attn_mask = _float_mask(attn_mask, "attn_mask", query.dtype)
            is_causal = is_causal and key_padding_mask is None
        (tgt_len, batch, _), src_len = query.shape, key.shape[0]
        attn_mask = self._check_attn_mask(attn_mask, batch, tgt_len, src_len)  # (1 or N*H, L, S)
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)  # (L, N, E), (S, N, E), (S, N, E)
        q, k, v, attn_mask = self._split_heads(q, k, v, attn_mask, key_padding_mask)  # (N*H, L or S, hd)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            out, weights = _attend_with_weights(q, k, v, attn_mask, dropout)  # (N*H, L, hd), (N*H, L, S)
            weights = weights.view(batch, self.num_heads, tgt_len, k.shape[1])
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            out, weights = _attend(q, k, v, attn_mask, dropout, is_causal, self.num_heads), None  # (N*H, L, hd)
        out = out.view(batch, self.num_heads, tgt_len, self.head_dim).permute(2, 0, 1, 3)  # (L, N, H, hd)
        out = self.out_proj(out.reshape(tgt_len, batch, self.embed_dim))  # (L, N, E)
        if not batched:
            return out.squeeze(1), None if weights is None else weights.squeeze(0)
        return (out.transpose(0, 1) if self.batch_first else out), weights

    def _check_inputs(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
        """Whether the inputs are batched; a clear error for shapes ``nn.MultiheadAttention`` refuses too."""
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise RanksearchError(
                "query, key and value must all be 3-D (batched) or all 2-D (unbatched), got "
                f"{query.dim()}-D, {key.dim()}-D and {value.dim()}-D"
            )
        expected = {"query": (query, self.embed_dim), "key": (key, self.kdim), "value": (value, self.vdim)}
        for what, (tensor, size) in expected.items():
            if tensor.shape[-1] != size:
                raise RanksearchError(f"{what} has {tensor.shape[-1]} features, this attention expects {size}")
        if key.shape[:-1] != value.shape[:-1]:
            raise RanksearchError(f"key and value must match in all but features, got {key.shape} and {value.shape}")
        return query.dim() == 3

    def _check_attn_mask(
        self, attn_mask: torch.Tensor | None, batch: int, tgt_len: int, src_len: int
    ) -> torch.Tensor | None:
        if attn_mask is None:
            return None
        shapes = {2: (tgt_len, src_len), 3: (batch * self.num_heads, tgt_len, src_len)}
        if attn_mask.dim() not in shapes or tuple(attn_mask.shape) != shapes[attn_mask.dim()]:
            raise RanksearchError(
                f"attn_mask must have shape {shapes[2]} or {shapes[3]} (batch * num_heads, L, S), "
                f"got {tuple(attn_mask.shape)}"
            )
        return attn_mask.unsqueeze(0) if attn_mask.dim() == 2 else attn_mask

    def _split_heads(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Heads folded into the batch, extra key/value positions appended, the padding mask merged in."""
        batch, heads = q.shape[1], self.num_heads
        if self.bias_k is not None:  # one learned key/value position more
            k = torch.cat([k, self.bias_k.repeat(1, batch, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, batch, 1)])
            attn_mask, key_padding_mask = _pad(attn_mask), _pad(key_padding_mask)
        q, k, v = (x.reshape(x.shape[0], batch * heads, self.head_dim).transpose(0, 1) for x in (q, k, v))
        if self.add_zero_attn:  # one all-zero key/value position more
            zeros = k.new_zeros(batch * heads, 1, self.head_dim)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            attn_mask, key_padding_mask = _pad(attn_mask), _pad(key_padding_mask)
        src_len = k.shape[1]
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (batch, src_len):
                raise RanksearchError(
                    f"key_padding_mask must have shape {(batch, src_len)} (N, S), got {tuple(key_padding_mask.shape)}"
                )
            padding = key_padding_mask.view(batch, 1, 1, src_len).expand(-1, heads, -1, -1)
            padding = padding.reshape(batch * heads, 1, src_len)
            attn_mask = padding if attn_mask is None else attn_mask + padding
        return q, k, v, attn_mask


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
    causal: bool,
    heads: int,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with the heads folded into the batch: ``(N*H, L, hd)`` in and out."""
    batch = q.shape[0] // heads
    if mask is not None:  # (1 or N*H, L, S) -> (1, 1, L, S) or (N, H, L, S)
        mask = mask.unsqueeze(0) if mask.shape[0] == 1 else mask.view(batch, heads, *mask.shape[1:])
    q, k, v = (x.view(batch, heads, *x.shape[1:]) for x in (q, k, v))  # (N, H, L or S, hd)
    return F.scaled_dot_product_attention(q, k, v, mask, dropout, causal).flatten(0, 1)  # (N*H, L, hd)


def _split(part: torch.Tensor, views: bool) -> nn.Parameter:
    data = part.detach() if views else part.detach().clone()
    return nn.Parameter(data, requires_grad=part.requires_grad)


def _float_mask(mask: torch.Tensor | None, name: str, dtype: torch.dtype) -> torch.Tensor | None:
    """A bool mask (True = masked) as an additive float mask; a float mask as it is (torch's rule)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise RanksearchError(f"{name} must be a bool or floating-point tensor, got {mask.dtype}")
    return mask


def _pad(mask: torch.Tensor | None) -> torch.Tensor | None:
    """One more (unmasked) key position."""
    return None if mask is None else F.pad(mask, (0, 1))


def _attend_with_weights(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, dropout: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit softmax attention (torch's ``need_weights`` path): output and the weights after dropout."""
    q = q * math.sqrt(1.0 / q.shape[-1])
    if attn_mask is not None:
        scores = torch.baddbmm(attn_mask, q, k.transpose(-2, -1))  # (N*H, L, S)
    else:
        scores = torch.bmm(q, k.transpose(-2, -1))
    weights = F.softmax(scores, dim=-1)
    if dropout > 0.0:
        weights = F.dropout(weights, p=dropout)
    return torch.bmm(weights, v), weights


# --- models ---------------------------------------------------------------------------------------------


def unpack_blockers(model: nn.Module) -> dict[str, str]:
    """Name -> why that ``nn.MultiheadAttention`` of ``model`` stays packed (the others can be unpacked)."""
    module_names: dict[int, list[str]] = defaultdict(list)
    holders: dict[int, set[int]] = defaultdict(set)
    for name, module in model.named_modules(remove_duplicate=False):
        module_names[id(module)].append(name)
        for param in module.parameters(recurse=False):
            holders[id(param)].add(id(module))
    blocked = {}
    for name, mha in model.named_modules():
        if not isinstance(mha, nn.MultiheadAttention):
            continue
        reason = _own_blocker(mha) if name else "it is the model itself (use UnpackedMultiheadAttention.from_mha)"
        for param_name in ("in_proj_weight", "in_proj_bias"):
            param = getattr(mha, param_name)
            others = [] if param is None else sorted(holders[id(param)] - {id(mha)})
            if reason is None and others:
                shared = ", ".join(module_names[others[0]])
                reason = f"its packed {param_name} is shared with {shared}: unpacking would untie it"
        if reason is not None:
            blocked[name] = reason
    return blocked


def _own_blocker(mha: nn.MultiheadAttention) -> str | None:
    if type(mha) is not nn.MultiheadAttention:
        return f"{type(mha).__name__} subclasses nn.MultiheadAttention: its forward may differ"
    if parametrize.is_parametrized(mha) or parametrize.is_parametrized(mha.out_proj):
        return "its weights are reparametrized (torch.nn.utils.parametrize)"
    if any(len(hooks) for hooks in (mha._forward_hooks, mha._forward_pre_hooks)):
        return "it has forward hooks, which an unpacked module would not run"
    return None


def unpack_in_place(model: nn.Module, names: Iterable[str] | None = None, *, views: bool = False) -> list[str]:
    """Swap the ``nn.MultiheadAttention`` modules called ``names`` (default: all that can be unpacked) for
    :class:`UnpackedMultiheadAttention` in ``model`` itself; returns the names swapped.

    A module registered under several names is swapped under all of them (one new module, shared the same
    way). Encoders holding a swapped module leave torch's fast path (:func:`turn_off_fast_paths`).
    Raises :class:`RanksearchError` for a name that is not an attention module or cannot be unpacked.
    """
    blocked = unpack_blockers(model)
    present = {name: m for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    wanted = [n for n in present if n not in blocked] if names is None else list(names)
    for name in wanted:
        if name not in present:
            raise RanksearchError(f"{name!r} is not an nn.MultiheadAttention of the model")
        if name in blocked:
            raise RanksearchError(f"attention {name!r} cannot be unpacked: {blocked[name]}")
    swaps = {id(present[name]): UnpackedMultiheadAttention.from_mha(present[name], views=views) for name in wanted}
    swapped = []
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if id(module) in swaps and name:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            parent._modules[child] = swaps[id(module)]  # setattr with nn.Sequential/ModuleList too
            turn_off_fast_paths(model, name)
            swapped.append(name)
    return swapped


def unpack_attention(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.MultiheadAttention`` that can be unpacked swapped for its
    :class:`UnpackedMultiheadAttention` (the same function; ``model`` is untouched).

    The copy's ``state_dict`` names the projections ``<attn>.q_proj.weight`` etc. instead of
    ``<attn>.in_proj_weight``; :func:`unpack_blockers` says which modules stay packed and why.
    """
    if not isinstance(model, nn.Module):
        raise RanksearchError(f"unpack_attention takes an nn.Module, got {type(model).__name__}")
    unpacked = copy.deepcopy(model)
    if isinstance(unpacked, nn.MultiheadAttention) and _own_blocker(unpacked) is None:
        return UnpackedMultiheadAttention.from_mha(unpacked)
    unpack_in_place(unpacked)
    return unpacked


def searchable_view(model: nn.Module) -> nn.Module:
    """``model`` as the search sees it: attention projections are layers of their own.

    ``model`` itself when it has no ``nn.MultiheadAttention`` to unpack; otherwise a copy of its module
    tree that shares every parameter and buffer (no weight is copied) with those modules unpacked (packed
    q/k/v as views). For listing layers, resolving names and measuring; train the real model, not this.
    """
    if not any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        return model
    if len(unpack_blockers(model)) == sum(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        return model
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    view = copy.deepcopy(model, shared)
    unpack_in_place(view, views=True)
    return view


def turn_off_fast_paths(model: nn.Module, name: str) -> None:
    """Keep torch's encoder fast path off around the module ``name`` (a replaced or unpacked module).

    Every ``nn.TransformerEncoderLayer`` above it gets ``activation_relu_or_gelu = 0``: torch reads that
    flag only to choose the fused path (which would run on the dense weights), the ordinary path calls
    ``self.activation``. Every ``nn.TransformerEncoder`` above it gets ``use_nested_tensor = False``: its
    nested-tensor path would feed nested tensors to layers that now take the ordinary path. Both are plain
    attributes, kept by ``deepcopy`` and pickling; :func:`ranksearch.compress.replace_module` sets them,
    so models rebuilt by :func:`ranksearch.load` get them too.
    """
    parts = name.split(".")
    for depth in range(len(parts)):
        prefix = ".".join(parts[:depth])
        module = model.get_submodule(prefix) if prefix else model
        if isinstance(module, nn.TransformerEncoderLayer):
            module.activation_relu_or_gelu = 0
        elif isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
