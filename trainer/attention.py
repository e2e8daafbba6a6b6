"""Attention for packed rows on the GPU: FlashAttention's variable-length kernel
(``torch.nn.attention.varlen``) over the row's conversations, causal inside each.

Without it a packed row goes through SDPA with a dense ``tokens x tokens`` block mask, which
only the memory-efficient kernel accepts: it computes every block, masked or not. On one H200
that kernel took 808 of the 1,387 ms of a step over two packed 2-4k chats (docs/benchmarks.md).

:class:`trainer.data.PackingCollator` adds the conversations' boundaries to each batch
(``cu_seq_lens_q/k``, ``max_length_q/k``, the keyword arguments transformers forwards to the
attention function). Everything else (padded batches, evaluation, generation, packed LoRA and full
SFT on CPU) goes to transformers' own SDPA function, so the registered implementation is safe to
load always.

P-Tuning v2 packs too. Its trained prefix reaches a layer as keys and values ahead of the row's
(:mod:`trainer.prefix`), and every conversation of the row attends to it: each conversation's
keys become the prefix followed by its own (:func:`behind_prefix`), and causality is aligned to
the last key, as FlashAttention aligns it when a sequence has more keys than queries. On CPU,
where transformers' mask cannot express that, each conversation runs through SDPA alone.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "glmft_packed"


def _varlen_kernel() -> tuple[Any, frozenset[str]] | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


# Looked up once, at import: ``compile: true`` (trainer.compile) traces the forward, and dynamo
# would re-trace a lookup there (an import, ``inspect.signature``) and warn about its cache.
_VARLEN = _varlen_kernel()


def varlen_causal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bounds_q: torch.Tensor,
    bounds_k: torch.Tensor,
    longest_q: int,
    longest_k: int,
    scale: float | None,
) -> torch.Tensor:
    """FlashAttention's variable-length kernel over ``(tokens, heads, dim)`` sequences, causal
    with each sequence's last query aligned to its last key (GPU; torch releases name the
    options differently)."""
    varlen_attn, params = _VARLEN  # type: ignore[misc]
    options: dict[str, Any] = {}
    if "window_size" in params:
        options["window_size"] = (-1, 0)  # causal, aligned to the last key
    else:
        options["is_causal"] = True
    if "scale" in params and scale is not None:
        options["scale"] = scale
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        else:
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    out: torch.Tensor = varlen_attn(q, k, v, bounds_q, bounds_k, longest_q, longest_k, **options)
    return out


def varlen_available(device: torch.device) -> bool:
    """Whether :func:`varlen_causal` can run on ``device``."""
    return _VARLEN is not None and device.type == "cuda"


def packed_attention_available() -> bool:
    return torch.cuda.is_available() and _VARLEN is not None


def register_packed_attention(*, prefix: bool = False) -> str | None:
    """Register :func:`packed_attention` with transformers; its name, or None where the
    variable-length kernel cannot run (no GPU, an older torch) and transformers' own packed
    mask serves; with ``prefix`` (P-Tuning v2) always, as that mask cannot."""
    if not (packed_attention_available() or prefix):
        return None
    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``query`` ``(1, heads, tokens, dim)``, ``key``/``value`` ``(1, kv_heads, prefix + tokens,
    dim)`` (``prefix`` 0 but with P-Tuning v2); returns ``(1, tokens, heads, dim)`` as
    transformers' attention functions do."""
    bounds = kwargs.get("cu_seq_lens_q")
    prefix = key.shape[-2] - query.shape[-2]
    varlen = _VARLEN is not None and query.is_cuda
    if bounds is None or query.shape[0] != 1 or dropout or not (varlen or prefix > 0):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
    bounds = bounds.to(device=q.device, dtype=torch.int32)
    bounds_k = bounds
    if prefix > 0:
        k, v, bounds_k = behind_prefix(k, v, bounds, prefix)
    if not varlen:
        return each_conversation(q, k, v, bounds, bounds_k, scaling).unsqueeze(0), None
    longest = int(kwargs["max_length_q"])
    out = varlen_causal(q, k, v, bounds, bounds_k, longest, longest + prefix, scaling)
    return out.unsqueeze(0), None


def behind_prefix(
    key: torch.Tensor, value: torch.Tensor, bounds: torch.Tensor, prefix: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``key``/``value`` ``(prefix + tokens, kv_heads, dim)``, the prefix then a packed row of
    conversations bounded by ``bounds``: rearranged so that each conversation's keys are the
    prefix followed by its own, with the bounds of those. Shapes follow from the input's alone
    (no value read back), so a compiled graph keeps them symbolic; the prefix's gradient sums
    over the conversations."""
    conversations = bounds.numel() - 1
    bounds_k = bounds + prefix * torch.arange(conversations + 1, device=bounds.device)
    position = torch.arange(key.shape[0] - prefix + conversations * prefix, device=key.device)
    owner = torch.searchsorted(bounds_k, position, right=True) - 1
    offset = position - bounds_k[owner]
    source = torch.where(offset < prefix, offset, bounds[owner] + offset)
    return key[source], value[source], bounds_k.to(torch.int32)


def each_conversation(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bounds: torch.Tensor,
    bounds_k: torch.Tensor,
    scaling: float | None,
) -> torch.Tensor:
    """What the variable-length kernel computes, one conversation at a time through SDPA (CPU):
    causal with the last query aligned to the last key."""
    out = []
    edges, edges_k = bounds.tolist(), bounds_k.tolist()
    for i in range(len(edges) - 1):
        qs = q[edges[i] : edges[i + 1]].transpose(0, 1)  # (heads, tokens, dim)
        ks, vs = (t[edges_k[i] : edges_k[i + 1]].transpose(0, 1) for t in (k, v))
        causal = torch.ones(qs.shape[1], ks.shape[1], dtype=torch.bool, device=q.device)
        causal = causal.tril(ks.shape[1] - qs.shape[1])
        gqa = ks.shape[0] != qs.shape[0]
        o = F.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=causal, scale=scaling, enable_gqa=gqa
        )
        out.append(o.transpose(0, 1))
    return torch.cat(out)
