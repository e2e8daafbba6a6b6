"""Run by ``test_triton_kernels.py`` under Triton's interpreter (``TRITON_INTERPRET=1``):
compares each kernel of :mod:`serving.fused`, an engine whose layers use them, and the paged
decode attention of :mod:`serving.kernels` (one program per row and head, and split) with the
torch code they replace, in float32 on the CPU. Prints one JSON line."""

from __future__ import annotations

import functools
import json
import sys
import threading
from pathlib import Path

import torch

from serving import fused, kernels
from serving.attention import gathered_decode_attention
from serving.engine import Engine
from serving.events import Event
from serving.kvcache import KVCache
from serving.model import Glm, PrefillRow, _rms, _rotate
from serving.params import GenerationParams
from serving.requests import Request
from trainer.modeling import load_model, load_tokenizer
from trainer.tiny import build_tiny_model


def largest(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def fused_kernels() -> dict[str, float | bool]:
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    tokens, width, heads, kv_heads, dim, inner = 7, 96, 4, 2, 16, 1500  # widths not powers of 2
    x, delta, weight = rand(tokens, width), rand(tokens, width), rand(width)
    normed, summed = fused.add_rms_norm(x, delta, weight, 1e-5)
    plain, same = fused.add_rms_norm(x, None, weight, 1e-5)
    qkv = rand(tokens, (heads + 2 * kv_heads) * dim)
    angles = torch.rand(50, dim // 4, generator=generator) * 6.3
    cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
    positions = torch.randint(0, 50, (tokens,), generator=generator)
    q, k = fused.rotate_qk(qkv, cos, sin, positions, heads, kv_heads, dim)
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    gate_up = rand(tokens, 2 * inner)
    gate, up = gate_up.chunk(2, -1)
    return {
        "add_rms_norm": largest(normed, _rms(x + delta, weight, 1e-5)),
        "residual_sum_equal": bool(torch.equal(summed, x + delta)),
        "rms_norm": largest(plain, _rms(x, weight, 1e-5)),
        "no_residual_returns_input": same is x,
        "rotate_q_equal": bool(
            torch.equal(q, _rotate(qkv[:, : heads * dim].view(tokens, heads, dim), c, s))
        ),
        "rotate_k_equal": bool(
            torch.equal(
                k,
                _rotate(qkv[:, heads * dim : (heads + kv_heads) * dim].view(tokens, 2, dim), c, s),
            )
        ),
        "silu_mul": largest(fused.silu_mul(gate_up), up * torch.nn.functional.silu(gate)),
    }


def attention() -> dict[str, float]:
    """The paged decode kernel, whole and split over 2 and 8 programs, against the gathered
    torch computation; rows of 1 to 300 tokens in blocks of 16 scattered over the cache."""
    generator = torch.Generator().manual_seed(1)
    blocks, block_size, kv_heads, dim, rows, heads = 128, 16, 2, 32, 5, 8
    keys = torch.randn(blocks, block_size, kv_heads, dim, generator=generator)
    values = torch.randn(blocks, block_size, kv_heads, dim, generator=generator)
    q = torch.randn(rows, heads, dim, generator=generator)
    lengths = torch.tensor([1, 17, 64, 129, 300], dtype=torch.int32)
    order = torch.randperm(blocks - 1, generator=generator) + 1
    tables = order[: rows * 20].view(rows, 20).to(torch.int32)
    expected = gathered_decode_attention(q, keys, values, tables, lengths, dim**-0.5)
    return {
        f"splits_{n}": largest(
            kernels.paged_decode_attention(q, keys, values, tables, lengths, dim**-0.5, n),
            expected,
        )
        for n in (1, 2, 8)
    }


def answers(engine: Engine, prompts: list[list[int]]) -> list[list[int]]:
    """Greedy token ids of each prompt, all in one batch."""
    done = [threading.Event() for _ in prompts]
    results: dict[int, Event] = {}

    def on_event(i: int, event: Event) -> None:
        if event.kind != "delta":
            results[i] = event
            done[i].set()

    params = GenerationParams(max_new_tokens=12, temperature=0, repetition_penalty=1.0)
    for i, prompt in enumerate(prompts):
        engine.submit(Request(prompt, params, functools.partial(on_event, i)))
    for flag in done:
        assert flag.wait(300), "no answer in time"
    failed = [e.message for e in results.values() if e.result is None]
    assert not failed, failed
    return [list(results[i].result.token_ids) for i in range(len(prompts))]  # type: ignore[union-attr]


def engines(root: Path) -> dict[str, object]:
    """Logits of a prefill and of a decode step of the tiny model with and without the kernels,
    and greedy answers of an engine each way."""
    model_dir = build_tiny_model(root / "tiny", seed=0)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=torch.float32)
    prompts = [tokenizer.encode(text) for text in ("hello there", "a longer question, please", "x")]
    runs, logits = {}, {}
    for name in ("torch", "fused"):
        engine = Engine(model, tokenizer, max_batch=4, cache_bytes=8 * 1024**2)
        engine.glm.fused = name == "fused"  # on the CPU only the interpreter runs the kernels
        try:
            logits[name] = step_logits(engine.glm, engine.cache, prompts)
            runs[name] = answers(engine, prompts)
        finally:
            engine.close()
    return {
        "prefill": largest(logits["torch"][0], logits["fused"][0]),
        "decode": largest(logits["torch"][1], logits["fused"][1]),
        "logits_scale": float(logits["torch"][1].abs().max()),
        "equal_answers": runs["torch"] == runs["fused"],
    }


def step_logits(
    glm: Glm, cache: KVCache, prompts: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefill's logits of ``prompts``, then those of one decode step after it."""
    tables = [cache.allocate(len(p) + 2) for p in prompts]
    assert all(tables), "the cache has no room for the prompts"
    blocks = [t for t in tables if t]
    try:
        with torch.inference_mode():
            first = glm.prefill([PrefillRow(p, t) for p, t in zip(prompts, blocks, strict=True)])
            width = max(len(t) for t in blocks)
            return first, glm.decode(
                first.argmax(-1),
                torch.tensor([len(p) for p in prompts]),
                torch.tensor([t + [0] * (width - len(t)) for t in blocks], dtype=torch.int32),
                None,
            )
    finally:
        for table in blocks:
            cache.release(table)


if __name__ == "__main__":
    report = {
        "fused": fused_kernels(),
        "attention": attention(),
        "engine": engines(Path(sys.argv[1])),
    }
    print(json.dumps(report))
