"""Attention over the paged cache: writing a step's keys and values, the decode step (one query
per row) and the prefill (a packed batch of new rows, each behind its P-Tuning v2 prefix).

On a GPU the decode step runs the Triton kernel of :mod:`serving.kernels` and the prefill
FlashAttention's variable-length kernel; elsewhere the same computations run in plain torch.
"""

from __future__ import annotations

import inspect
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from serving import kernels
from serving.kvcache import KVCache


def _varlen_kernel() -> tuple[Any, frozenset[str]] | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


_VARLEN = _varlen_kernel()


def write_kv(
    cache: KVCache, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> None:
    """Store ``keys``/``values`` ``(tokens, kv_heads, dim)`` at flat cache ``slots``
    (``block * block_size + offset``)."""
    kv_heads, dim = keys.shape[1:]
    cache.keys[layer].view(-1, kv_heads, dim).index_copy_(0, slots, keys)
    cache.values[layer].view(-1, kv_heads, dim).index_copy_(0, slots, values)


def decode_attention(
    q: torch.Tensor,
    cache: KVCache,
    layer: int,
    tables: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Each row's query ``(rows, heads, dim)`` against its first ``lengths[row]`` cached
    tokens, found through its block table row; returns ``(rows, heads, dim)``."""
    keys, values = cache.keys[layer], cache.values[layer]
    if kernels.available(q.device):
        return kernels.paged_decode_attention(q, keys, values, tables, lengths, scale)
    return gathered_decode_attention(q, keys, values, tables, lengths, scale)


def gathered_decode_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tables: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """:func:`decode_attention` in plain torch: every row's blocks gathered up to the longest
    row, the rest masked."""
    block_size = keys.shape[1]
    longest = int(lengths.max())
    tables = tables[:, : -(-longest // block_size)].long()
    rows = q.shape[0]
    k = keys[tables].reshape(rows, -1, *keys.shape[2:]).transpose(1, 2)  # (rows, kv, len, dim)
    v = values[tables].reshape(rows, -1, *values.shape[2:]).transpose(1, 2)
    mask = torch.arange(k.shape[2], device=q.device)[None, :] < lengths[:, None]
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2),
        k,
        v,
        attn_mask=mask[:, None, None, :],
        scale=scale,
        enable_gqa=k.shape[1] != q.shape[1],
    )
    return out.squeeze(2)


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bounds_q: list[int],
    bounds_k: list[int],
    scale: float,
) -> torch.Tensor:
    """Causal attention of packed rows: ``q`` ``(tokens, heads, dim)``; ``k``/``v``
    ``(keys, kv_heads, dim)``, each row's prefix followed by its own tokens. Row ``i`` holds
    queries ``bounds_q[i]:bounds_q[i+1]`` and keys ``bounds_k[i]:bounds_k[i+1]``; causality
    is aligned to the last key, so every query sees the whole prefix."""
    if _VARLEN is not None and q.is_cuda:
        return _varlen(q, k, v, bounds_q, bounds_k, scale)
    out = []
    for i in range(len(bounds_q) - 1):
        qs = q[bounds_q[i] : bounds_q[i + 1]].transpose(0, 1)  # (heads, tokens, dim)
        ks, vs = (t[bounds_k[i] : bounds_k[i + 1]].transpose(0, 1) for t in (k, v))
        causal = torch.ones(qs.shape[1], ks.shape[1], dtype=torch.bool, device=q.device)
        causal = causal.tril(ks.shape[1] - qs.shape[1])
        o = F.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=causal, scale=scale, enable_gqa=ks.shape[0] != qs.shape[0]
        )
        out.append(o.transpose(0, 1))
    return torch.cat(out)


def _varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bounds_q: list[int],
    bounds_k: list[int],
    scale: float,
) -> torch.Tensor:
    varlen_attn, params = _VARLEN  # type: ignore[misc]
    # torch releases name the causal switch differently; causality aligned to the last key
    options: dict[str, Any] = {"scale": scale}
    options.update({"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True})
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        else:
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    cu_q = torch.tensor(bounds_q, dtype=torch.int32, device=q.device)
    cu_k = torch.tensor(bounds_k, dtype=torch.int32, device=q.device)
    longest_q = max(b - a for a, b in pairwise(bounds_q))
    longest_k = max(b - a for a, b in pairwise(bounds_k))
    out: torch.Tensor = varlen_attn(q, k, v, cu_q, cu_k, longest_q, longest_k, **options)
    return out
