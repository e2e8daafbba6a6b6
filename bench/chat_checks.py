"""The serving bench's correctness checks: the Triton paged-attention kernel against plain torch,
and the engine's greedy tokens against transformers' and PEFT's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.chat_fixtures import Collector, build_model, prompts, write_lora
from serving.adapters import AdapterSpec
from serving.engine import Engine
from serving.params import GenerationParams
from serving.requests import Request

# ---- correctness checks -----------------------------------------------------------------------


def check_attention(device: torch.device) -> dict[str, Any]:
    """The Triton paged decode kernel, whole and split, against the plain torch computation."""
    from serving import kernels
    from serving.attention import gathered_decode_attention

    if not kernels.available(device):
        return {"skipped": "no Triton on this device"}
    generator = torch.Generator(device=device).manual_seed(0)
    blocks, block_size, kv_heads, dim, rows, heads = 512, 16, 2, 128, 24, 32
    keys = torch.randn(blocks, block_size, kv_heads, dim, device=device, generator=generator)
    values = torch.randn(blocks, block_size, kv_heads, dim, device=device, generator=generator)
    keys, values = keys.bfloat16(), values.bfloat16()
    q = torch.randn(rows, heads, dim, device=device, generator=generator).bfloat16()
    lengths = torch.randint(1, 300, (rows,), device=device, generator=generator).to(torch.int32)
    order = torch.randperm(blocks - 1, device=device, generator=generator) + 1
    tables = order[: rows * 20].view(rows, 20).to(torch.int32)
    slow = gathered_decode_attention(q, keys, values, tables, lengths, dim**-0.5).float()
    result: dict[str, Any] = {"default_splits": kernels.splits_for(rows, kv_heads, device)}
    for splits in (1, 2, 8, None):
        fast = kernels.paged_decode_attention(q, keys, values, tables, lengths, dim**-0.5, splits)
        name = f"max_abs_diff_splits_{splits or 'default'}"
        result[name] = float((fast.float() - slow).abs().max())
    return result


def check_fused(device: torch.device) -> dict[str, Any]:
    """Each kernel of :mod:`serving.fused` against the model's torch code, at the bench's shape
    (hidden 4096, 32 heads and 2 KV heads of 128, intermediate 13,696) in bf16: the largest
    difference and the share of values equal to the bit."""
    from serving import fused, kernels
    from serving.model import _rms, _rotate

    if not kernels.available(device):
        return {"skipped": "no Triton on this device"}
    generator = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, generator=generator).bfloat16()

    def compare(fast: torch.Tensor, slow: torch.Tensor) -> dict[str, float]:
        return {
            "max_abs_diff": float((fast.float() - slow.float()).abs().max()),
            "equal_share": round(float((fast == slow).float().mean()), 5),
        }

    tokens, hidden, heads, kv_heads, dim, inner = 48, 4096, 32, 2, 128, 13696
    x, delta, weight = rand(tokens, hidden), rand(tokens, hidden), rand(hidden)
    normed, summed = fused.add_rms_norm(x, delta, weight, 1e-5)
    plain, _ = fused.add_rms_norm(x, None, weight, 1e-5)
    qkv = rand(tokens, (heads + 2 * kv_heads) * dim)
    angles = torch.rand(4096, dim // 4, device=device, generator=generator) * 6.3
    cos = angles.cos().repeat_interleave(2, -1).bfloat16()
    sin = angles.sin().repeat_interleave(2, -1).bfloat16()
    positions = torch.randint(0, 4096, (tokens,), device=device, generator=generator)
    q, k = fused.rotate_qk(qkv, cos, sin, positions, heads, kv_heads, dim)
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    keys = qkv[:, heads * dim : (heads + kv_heads) * dim]
    q_ref = _rotate(qkv[:, : heads * dim].view(tokens, heads, dim), c, s)
    k_ref = _rotate(keys.reshape(tokens, kv_heads, dim), c, s)
    gate_up = rand(tokens, 2 * inner)
    gate, up = gate_up.chunk(2, -1)
    return {
        "add_rms_norm": compare(normed, _rms(x + delta, weight, 1e-5)),
        "residual_sum": compare(summed, x + delta),
        "rms_norm": compare(plain, _rms(x, weight, 1e-5)),
        "rotate_q": compare(q, q_ref),
        "rotate_k": compare(k, k_ref),
        "silu_mul": compare(fused.silu_mul(gate_up), up * torch.nn.functional.silu(gate)),
    }


def check_tokens(tokenizer: Any, tiny: bool, tokenizer_dir: Path, root: Path) -> dict[str, Any]:
    """Greedy tokens of the engine against transformers' (and PEFT's, for a LoRA adapter) on a
    4-layer model of the bench's shape."""
    from peft import PeftModel

    model = build_model(tiny, tokenizer_dir, layers=4)
    spec = write_lora(root / "check", model.config, 1, seed=5)[0]
    batch = prompts(4, 32, model.config.vocab_size, seed=3)
    ids = torch.tensor(batch, device=next(model.parameters()).device)
    options = {"do_sample": False, "repetition_penalty": 1.0, "pad_token_id": 0}
    with torch.inference_mode():
        reference = model.generate(ids, max_new_tokens=24, min_new_tokens=24, **options)
        peft = PeftModel.from_pretrained(model, spec.path)
        adapted = peft.generate(input_ids=ids, max_new_tokens=24, min_new_tokens=24, **options)
        model = peft.unload()
    results: dict[str, Any] = {}
    runs: dict[bool, list[list[int]]] = {}
    for fused_ops in (True, False):
        engine = Engine(
            model, tokenizer, max_batch=8, cache_bytes=256 * 1024**2, fused_ops=fused_ops
        )
        if fused_ops:
            results["fused_kernels"] = engine.glm.fused
        try:
            for name, expected, adapter in (("base", reference, None), ("lora", adapted, spec)):
                ours = _engine_tokens(engine, batch, adapter, 24)
                runs.setdefault(fused_ops, []).extend(ours)
                expected_rows = expected[:, ids.shape[1] :].tolist()
                agree = [_common_prefix(a, b) for a, b in zip(ours, expected_rows, strict=True)]
                key = name if fused_ops else f"{name} (torch ops)"
                results[key] = {"tokens_agreeing_per_row": agree, "of": 24}
        finally:
            engine.close()
    results["fused vs torch ops"] = {
        "tokens_agreeing_per_row": [
            _common_prefix(a, b) for a, b in zip(runs[True], runs[False], strict=True)
        ],
        "of": 24,
    }
    return results


def _engine_tokens(
    engine: Engine, batch: list[list[int]], spec: AdapterSpec | None, new_tokens: int
) -> list[list[int]]:
    """Token ids the engine chooses (through its logits, so end tokens count too)."""
    chosen: dict[int, list[int]] = {}
    accept = engine._accept  # the bench records what the engine samples

    def recording(logits: torch.Tensor, start: int, end: int) -> None:
        for offset, row in enumerate(engine.batch.rows[start:end]):
            chosen.setdefault(id(row.request), []).append(int(logits[offset].float().argmax()))
        accept(logits, start, end)

    engine._accept = recording  # type: ignore[method-assign]
    try:
        params = GenerationParams(max_new_tokens=new_tokens, temperature=0, repetition_penalty=1.0)
        collector = Collector(len(batch))
        requests = [
            Request(p, params, collector.callback(i), adapter=spec) for i, p in enumerate(batch)
        ]
        for request in requests:
            engine.submit(request)
        collector.done.wait(120)
    finally:
        engine._accept = accept  # type: ignore[method-assign]
    return [chosen.get(id(r), [])[:new_tokens] for r in requests]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
