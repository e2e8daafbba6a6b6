"""Triton kernel of the decode step's attention over the paged cache (GPU only).

Programs per (row, KV head, split): each loads the queries of that head's group once and walks
its share of the row's tokens 64 at a time, each token's block looked up in the row's block
table, keeping an online softmax, so a row reads exactly its own cached tokens, whatever the
other rows' lengths. A batch of few rows has few (row, KV head) pairs, fewer than the GPU has
multiprocessors, and each would walk its row's tokens alone (a P-Tuning v2 row holds 512 prefix
tokens besides its own): the tokens are split over several programs, whose normalised shares
and log-sum-exps a second kernel combines (split-K decoding). Lengths and tables are read on the
device, so a CUDA graph replays it for any batch composition.
:func:`serving.attention.gathered_decode_attention` is the same computation in plain torch (CPU,
and the reference the GPU bench checks against).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of torch come without Triton
    triton = None


def available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


#: the most programs a row's head splits its tokens over (:func:`splits_for`)
MAX_SPLITS = 8
#: the fewest 64-token tiles a split takes: a short row keeps to its first splits
MIN_TILES_PER_SPLIT = 2

if triton is not None:

    @triton.jit  # type: ignore[untyped-decorator]
    def _paged_decode(  # type: ignore[no-untyped-def]  # Triton reads annotations: constexprs only
        q_ptr,
        k_ptr,
        v_ptr,
        tables_ptr,
        lengths_ptr,
        out_ptr,
        partial_ptr,
        lse_ptr,
        scale,
        stride_qb,
        stride_qh,
        stride_kb,
        stride_kt,
        stride_kh,
        stride_tb,
        stride_ob,
        stride_oh,
        GROUP: tl.constexpr,
        GROUP_PAD: tl.constexpr,
        HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK: tl.constexpr,
        TILE: tl.constexpr,
        SPLITS: tl.constexpr,
        MIN_TILES: tl.constexpr,
    ):
        row = tl.program_id(0)
        kv_head = tl.program_id(1)
        split = tl.program_id(2)
        length = tl.load(lengths_ptr + row)
        tiles = tl.cdiv(length, TILE)
        chunk = tl.maximum(tl.cdiv(tiles, SPLITS), MIN_TILES)
        first = split * chunk
        last = tl.minimum(first + chunk, tiles)
        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, HEAD_DIM)
        t = tl.arange(0, TILE)  # TILE tokens a step: PAGES blocks of BLOCK, looked up apiece
        heads = kv_head * GROUP + g
        in_group = g < GROUP  # GROUP_PAD rounds the group up for tl.dot
        q = tl.load(
            q_ptr + row * stride_qb + heads[:, None] * stride_qh + d[None, :],
            mask=in_group[:, None],
            other=0.0,
        )
        best = tl.full((GROUP_PAD,), float("-inf"), tl.float32)
        total = tl.zeros((GROUP_PAD,), tl.float32)
        acc = tl.zeros((GROUP_PAD, HEAD_DIM), tl.float32)
        for j in range(first, last):
            position = j * TILE + t
            valid = position < length
            block = tl.load(tables_ptr + row * stride_tb + position // BLOCK, mask=valid, other=0)
            rows = block * stride_kb + (position % BLOCK) * stride_kt + kv_head * stride_kh
            offsets = rows[:, None] + d[None, :]
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
        if SPLITS == 1:
            out = acc / total[:, None]
            tl.store(
                out_ptr + row * stride_ob + heads[:, None] * stride_oh + d[None, :],
                out.to(out_ptr.dtype.element_ty),
                mask=in_group[:, None],
            )
        else:  # this split's share, normalised, and its log-sum-exp; an empty split: -inf
            at = (row * HEADS + heads) * SPLITS + split
            empty = first >= last
            out = tl.where(empty, 0.0, acc / tl.maximum(total, 1e-30)[:, None])
            tl.store(partial_ptr + at[:, None] * HEAD_DIM + d[None, :], out, mask=in_group[:, None])
            lse = tl.where(empty, float("-inf"), best + tl.log(tl.maximum(total, 1e-30)))
            tl.store(lse_ptr + at, lse, mask=in_group)

    @triton.jit  # type: ignore[untyped-decorator]
    def _combine_splits(  # type: ignore[no-untyped-def]
        partial_ptr,
        lse_ptr,
        out_ptr,
        stride_ob,
        stride_oh,
        HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        SPLITS: tl.constexpr,
    ):
        row = tl.program_id(0)
        head = tl.program_id(1)
        s = tl.arange(0, SPLITS)
        d = tl.arange(0, HEAD_DIM)
        at = (row * HEADS + head) * SPLITS + s
        lse = tl.load(lse_ptr + at)
        weight = tl.exp(lse - tl.max(lse, 0))
        partial = tl.load(partial_ptr + at[:, None] * HEAD_DIM + d[None, :])
        out = tl.sum(partial * weight[:, None], 0) / tl.sum(weight, 0)
        tl.store(out_ptr + row * stride_ob + head * stride_oh + d, out.to(out_ptr.dtype.element_ty))


def splits_for(rows: int, kv_heads: int, device: torch.device) -> int:
    """Programs per (row, KV head): enough for about two per multiprocessor, a power of two.
    Shapes only, so a captured graph keeps its choice."""
    processors = torch.cuda.get_device_properties(device).multi_processor_count
    wanted = -(-2 * processors // (rows * kv_heads))
    return min(MAX_SPLITS, 1 << max(wanted - 1, 0).bit_length())


def paged_decode_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tables: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
    splits: int | None = None,
) -> torch.Tensor:
    """``q`` ``(rows, heads, dim)`` against each row's first ``lengths[row]`` cached tokens;
    ``keys``/``values`` one layer's ``(blocks, block_size, kv_heads, dim)``; ``tables``
    ``(rows, blocks per row)`` int32. Each (row, KV head) spreads its tokens over ``splits``
    programs (a power of two; default :func:`splits_for`), whose shares a second kernel
    combines. Returns ``(rows, heads, dim)``."""
    rows, heads, dim = q.shape
    kv_heads = keys.shape[2]
    group = heads // kv_heads
    if splits is None:
        splits = splits_for(rows, kv_heads, q.device)
    out = torch.empty_like(q)
    partial = q.new_empty((rows, heads, splits, dim) if splits > 1 else (1,), dtype=torch.float32)
    lse = q.new_empty((rows, heads, splits) if splits > 1 else (1,), dtype=torch.float32)
    _paged_decode[(rows, kv_heads, splits)](
        q,
        keys,
        values,
        tables,
        lengths,
        out,
        partial,
        lse,
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
        HEADS=heads,
        HEAD_DIM=dim,
        BLOCK=keys.shape[1],
        TILE=max(64, keys.shape[1]),
        SPLITS=splits,
        MIN_TILES=MIN_TILES_PER_SPLIT,
    )
    if splits > 1:
        _combine_splits[(rows, heads)](
            partial,
            lse,
            out,
            out.stride(0),
            out.stride(1),
            HEADS=heads,
            HEAD_DIM=dim,
            SPLITS=splits,
        )
    return out
