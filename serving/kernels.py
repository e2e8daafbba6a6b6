"""Triton kernel of the decode step's attention over the paged cache (GPU only).

One program per (row, KV head): it loads the queries of that head's group once and walks the
row's blocks through its block table, keeping an online softmax, so a row reads exactly its own
cached tokens, whatever the other rows' lengths. Lengths and tables are read on the device, so a
CUDA graph replays it for any batch composition. :func:`serving.attention.decode_attention` is
the same computation in plain torch (CPU, and the reference the GPU bench checks against).
"""

from __future__ import annotations

from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of torch come without Triton
    triton = None


def available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


if triton is not None:

    @triton.jit  # type: ignore[untyped-decorator]
    def _paged_decode(
        q_ptr: Any,
        k_ptr: Any,
        v_ptr: Any,
        tables_ptr: Any,
        lengths_ptr: Any,
        out_ptr: Any,
        scale: float,
        stride_qb: int,
        stride_qh: int,
        stride_kb: int,
        stride_kt: int,
        stride_kh: int,
        stride_tb: int,
        stride_ob: int,
        stride_oh: int,
        GROUP: tl.constexpr,
        GROUP_PAD: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK: tl.constexpr,
    ) -> None:
        row = tl.program_id(0)
        kv_head = tl.program_id(1)
        length = tl.load(lengths_ptr + row)
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, HEAD_DIM)
        t = tl.arange(0, BLOCK)
        heads = kv_head * GROUP + g
        q = tl.load(
            q_ptr + row * stride_qb + heads[:, None] * stride_qh + d[None, :],
            mask=(g < GROUP)[:, None],
            other=0.0,
        )
        best = tl.full((GROUP_PAD,), float("-inf"), tl.float32)
        total = tl.zeros((GROUP_PAD,), tl.float32)
        acc = tl.zeros((GROUP_PAD, HEAD_DIM), tl.float32)
        for j in range(0, tl.cdiv(length, BLOCK)):
            block = tl.load(tables_ptr + row * stride_tb + j)
            valid = j * BLOCK + t < length
            offsets = block * stride_kb + t[:, None] * stride_kt + kv_head * stride_kh + d[None, :]
            k = tl.load(k_ptr + offsets, mask=valid[:, None], other=0.0)
            v = tl.load(v_ptr + offsets, mask=valid[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(k)) * scale
            scores = tl.where(valid[None, :], scores, float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, 1))
            p = tl.exp(scores - new_best[:, None])
            alpha = tl.exp(best - new_best)
            total = total * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            best = new_best
        out = acc / total[:, None]
        tl.store(
            out_ptr + row * stride_ob + heads[:, None] * stride_oh + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=(g < GROUP)[:, None],
        )


def paged_decode_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tables: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """``q`` ``(rows, heads, dim)`` against each row's first ``lengths[row]`` cached tokens;
    ``keys``/``values`` one layer's ``(blocks, block_size, kv_heads, dim)``; ``tables``
    ``(rows, blocks per row)`` int32. Returns ``(rows, heads, dim)``."""
    rows, heads, dim = q.shape
    kv_heads = keys.shape[2]
    group = heads // kv_heads
    out = torch.empty_like(q)
    _paged_decode[(rows, kv_heads)](
        q,
        keys,
        values,
        tables,
        lengths,
        out,
        scale,
        q.stride(0),
        q.stride(1),
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        tables.stride(0),
        out.stride(0),
        out.stride(1),
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=dim,
        BLOCK=keys.shape[1],
    )
    return out
