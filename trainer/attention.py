"""Attention for packed rows on the GPU: FlashAttention's variable-length kernel
(``torch.nn.attention.varlen``) over the row's conversations, causal inside each.

Without it a packed row goes through SDPA with a dense ``tokens x tokens`` block mask, which
only the memory-efficient kernel accepts: it computes every block, masked or not. On one H200
that kernel took 808 of the 1,387 ms of a step over two packed 2-4k chats (docs/benchmarks.md).

:class:`trainer.data.PackingCollator` adds the conversations' boundaries to each batch
(``cu_seq_lens_q/k``, ``max_length_q/k``, the keyword arguments transformers forwards to the
attention function). Everything else (padded batches, evaluation, generation, CPU) goes to
transformers' own SDPA function, so the registered implementation is safe to load always.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
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


def packed_attention_available() -> bool:
    return torch.cuda.is_available() and _VARLEN is not None


def register_packed_attention() -> str | None:
    """Register :func:`packed_attention` with transformers; its name, or None where the
    variable-length kernel cannot run (no GPU, an older torch)."""
    if not packed_attention_available():
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
    """``query`` ``(1, heads, tokens, dim)``, ``key``/``value`` ``(1, kv_heads, tokens, dim)``;
    returns ``(1, tokens, heads, dim)`` as transformers' attention functions do."""
    bounds = kwargs.get("cu_seq_lens_q")
    kernel = _VARLEN
    if bounds is None or kernel is None or query.shape[0] != 1 or dropout or not query.is_cuda:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    varlen_attn, params = kernel
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
    options: dict[str, Any] = {}
    if "window_size" in params:
        options["window_size"] = (-1, 0)  # causal
    else:
        options["is_causal"] = True
    if "scale" in params and scaling is not None:
        options["scale"] = scaling
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        else:
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    longest = int(kwargs["max_length_q"])
    bounds = bounds.to(device=q.device, dtype=torch.int32)
    out = varlen_attn(q, k, v, bounds, bounds, longest, longest, **options)
    return out.unsqueeze(0), None
