"""Triton kernels for the elementwise work between a layer's matrix products (GPU only).

Written as torch operations, a GLM-4 layer runs about forty small kernels besides its four
products and its attention: an RMSNorm is eight (cast, square, mean, epsilon, rsqrt, scale,
cast back, weight), the rotary embedding six per tensor. A CUDA graph removes their launch cost
from the CPU, not from the GPU: at decode batch sizes each still takes a few microseconds, and
together they take as long as the products. Three kernels do that work here, each in one pass:

- :func:`add_rms_norm`: the residual sum of the previous sub-layer and the norm of the next;
- :func:`rotate_qk`: GLM's partial interleaved rotary embedding of the queries and keys, read
  from the fused q/k/v product;
- :func:`silu_mul`: SwiGLU over the fused gate/up product.

Each computes what :mod:`serving.model`'s torch code computes, in its steps: float32 inside,
rounded to the activations' dtype wherever torch rounds (the residual sum, the normalised value
before the weight, each product of the rotation). The reductions run in another order, so a
value can differ from torch's in its last bit. They run where :func:`serving.kernels.available`
says Triton runs.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of torch come without Triton
    triton = None


if triton is not None:

    @triton.jit  # type: ignore[untyped-decorator]
    def _add_rms_norm(  # type: ignore[no-untyped-def]  # Triton reads annotations: constexprs only
        x_ptr,
        residual_ptr,
        weight_ptr,
        out_ptr,
        sum_ptr,
        eps,
        width,
        stride_x,
        stride_r,
        stride_o,
        stride_s,
        HAS_RESIDUAL: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        inside = cols < width
        x = tl.load(x_ptr + row * stride_x + cols, mask=inside, other=0.0)
        dtype = x.dtype
        if HAS_RESIDUAL:
            residual = tl.load(residual_ptr + row * stride_r + cols, mask=inside, other=0.0)
            x = (x.to(tl.float32) + residual.to(tl.float32)).to(dtype)
            tl.store(sum_ptr + row * stride_s + cols, x, mask=inside)
        xf = x.to(tl.float32)
        variance = tl.sum(xf * xf, axis=0) / width
        normed = (xf * tl.rsqrt(variance + eps)).to(dtype)
        weight = tl.load(weight_ptr + cols, mask=inside, other=0.0)
        out = (weight.to(tl.float32) * normed.to(tl.float32)).to(dtype)
        tl.store(out_ptr + row * stride_o + cols, out, mask=inside)

    @triton.jit  # type: ignore[untyped-decorator]
    def _rotate_qk(  # type: ignore[no-untyped-def]
        qkv_ptr,
        cos_ptr,
        sin_ptr,
        positions_ptr,
        q_ptr,
        k_ptr,
        stride_qkv,
        stride_table,
        HEADS: tl.constexpr,
        KV_HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        ROTARY: tl.constexpr,
    ):
        row = tl.program_id(0)
        head = tl.program_id(1)  # the query heads, then the key heads
        d = tl.arange(0, HEAD_DIM)
        source = qkv_ptr + row * stride_qkv + head * HEAD_DIM
        x = tl.load(source + d)
        dtype = x.dtype
        partner = tl.load(source + (d ^ 1)).to(tl.float32)  # the other element of d's pair
        half = tl.where(d % 2 == 0, -partner, partner)
        position = tl.load(positions_ptr + row)
        rotated = d < ROTARY
        cos = tl.load(cos_ptr + position * stride_table + d, mask=rotated, other=1.0)
        sin = tl.load(sin_ptr + position * stride_table + d, mask=rotated, other=0.0)
        a = (x.to(tl.float32) * cos.to(tl.float32)).to(dtype)
        b = (half * sin.to(tl.float32)).to(dtype)
        y = tl.where(rotated, (a.to(tl.float32) + b.to(tl.float32)).to(dtype), x)
        if head < HEADS:
            tl.store(q_ptr + (row * HEADS + head) * HEAD_DIM + d, y)
        else:
            tl.store(k_ptr + (row * KV_HEADS + head - HEADS) * HEAD_DIM + d, y)

    @triton.jit  # type: ignore[untyped-decorator]
    def _silu_mul(  # type: ignore[no-untyped-def]
        x_ptr,
        out_ptr,
        width,
        stride_x,
        stride_o,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < width
        gate = tl.load(x_ptr + row * stride_x + cols, mask=inside, other=0.0)
        up = tl.load(x_ptr + row * stride_x + width + cols, mask=inside, other=0.0)
        dtype = gate.dtype
        g = gate.to(tl.float32)
        activated = (g / (1.0 + tl.exp(-g))).to(dtype)
        out = (up.to(tl.float32) * activated.to(tl.float32)).to(dtype)
        tl.store(out_ptr + row * stride_o + cols, out, mask=inside)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual) * weight, x + residual)`` of ``(tokens, width)`` rows; without
    ``residual``, ``x`` itself is normed (and returned as the sum)."""
    tokens, width = x.shape
    out = torch.empty_like(x)
    total = torch.empty_like(x) if residual is not None else x
    block = triton.next_power_of_2(width)
    _add_rms_norm[(tokens,)](
        x,
        residual if residual is not None else x,
        weight,
        out,
        total,
        eps,
        width,
        x.stride(0),
        residual.stride(0) if residual is not None else 0,
        out.stride(0),
        total.stride(0),
        HAS_RESIDUAL=residual is not None,
        BLOCK=block,
        num_warps=min(max(block // 256, 1), 16),
    )
    return out, total


def rotate_qk(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    heads: int,
    kv_heads: int,
    head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotated queries ``(tokens, heads, head_dim)`` and keys ``(tokens, kv_heads,
    head_dim)`` of the fused q/k/v product ``qkv``, at ``positions`` of the rotary tables
    ``cos``/``sin`` ``(positions, rotary dim)`` (interleaved as :mod:`serving.model` keeps
    them)."""
    tokens = qkv.shape[0]
    q = qkv.new_empty(tokens, heads, head_dim)
    k = qkv.new_empty(tokens, kv_heads, head_dim)
    _rotate_qk[(tokens, heads + kv_heads)](
        qkv,
        cos,
        sin,
        positions,
        q,
        k,
        qkv.stride(0),
        cos.stride(0),
        HEADS=heads,
        KV_HEADS=kv_heads,
        HEAD_DIM=head_dim,
        ROTARY=cos.shape[-1],
        num_warps=1,
    )
    return q, k


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``up * silu(gate)`` of ``gate_up`` ``(tokens, 2 * width)``, gate first."""
    tokens, double = gate_up.shape
    width = double // 2
    out = gate_up.new_empty(tokens, width)
    block = 1024
    _silu_mul[(tokens, triton.cdiv(width, block))](
        gate_up, out, width, gate_up.stride(0), out.stride(0), BLOCK=block, num_warps=4
    )
    return out
