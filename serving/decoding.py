"""The decode loop of one batch: left-padded prefill, then one token per row and step on a
shared key/value cache; finished rows leave the batch (and the cache) as they finish.

Each row streams its text as it grows: deltas hold back an incomplete UTF-8 character and any
tail that could still become a stop string, so the deltas always add up to the final text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from serving.events import Event, FinishReason, Result
from serving.sampling import GenerationParams, choose_tokens, make_generator

Forward = Callable[..., torch.Tensor]  # (adapter_names, **model inputs) -> last-position logits


@dataclass
class Row:
    prompt: list[int]
    params: GenerationParams
    adapter: str
    on_event: Callable[[Event], None]
    is_cancelled: Callable[[], bool]
    submitted: float
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish: FinishReason | None = None
    started: float = 0.0
    first_token: float = 0.0


def decode_batch(
    forward: Forward,
    rows: list[Row],
    *,
    tokenizer: Any,
    eos_ids: set[int],
    pad_id: int,
    vocab_size: int,
    device: torch.device,
    cache: DynamicCache,
    prefix_length: int = 0,
    between_steps: Callable[[], None] = lambda: None,
) -> None:
    """Generate every row to its end, telling each row's ``on_event`` as it goes."""
    now = time.monotonic()
    for row in rows:
        row.started = now
    width = max(len(r.prompt) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), prefix_length + width), dtype=torch.long)
    mask[:, :prefix_length] = 1
    seen = torch.zeros((len(rows), vocab_size), dtype=torch.bool)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt)
        mask[i, prefix_length + width - len(row.prompt) :] = 1
        seen[i, row.prompt] = True
    input_ids, mask, seen = input_ids.to(device), mask.to(device), seen.to(device)
    positions = (mask[:, prefix_length:].cumsum(-1) - 1).clamp(min=0) + prefix_length
    generators = [make_generator(r.params, device) for r in rows]
    logits = forward(
        [r.adapter for r in rows],
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    )
    positions = positions[:, -1:]
    while True:
        tokens = choose_tokens(logits, seen, [r.params for r in rows], generators)
        seen[torch.arange(len(rows), device=device), tokens] = True
        for row, token in zip(rows, tokens.tolist(), strict=True):
            _advance(row, token, tokenizer, eos_ids)
        keep = [i for i, row in enumerate(rows) if row.finish is None]
        if not keep:
            return
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            tokens, mask, seen = tokens[index], mask[index], seen[index]
            positions = positions[index]
            rows = [rows[i] for i in keep]
            generators = [generators[i] for i in keep]
        between_steps()
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
        positions = positions + 1
        logits = forward(
            [r.adapter for r in rows],
            input_ids=tokens.unsqueeze(-1),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )


def _advance(row: Row, token: int, tokenizer: Any, eos_ids: set[int]) -> None:
    """Add ``token`` to ``row``; stream what is final of its text; finish it when it ends."""
    if not row.ids:
        row.first_token = time.monotonic()
    if row.is_cancelled():
        row.finish = "cancelled"
    elif token in eos_ids:
        row.finish = "stop"
    else:
        row.ids.append(token)
        text = tokenizer.decode(row.ids, skip_special_tokens=True).lstrip()
        cut = _stop_at(text, row.params.stop)
        if cut is not None:
            text, row.finish = text[:cut], "stop"
        elif len(row.ids) >= row.params.max_new_tokens:
            row.finish = "length"
        row.text = text
    final = row.finish is not None
    safe = len(row.text) if final else _safe_length(row.text, row.params.stop)
    if safe > row.emitted and row.finish != "cancelled":
        row.on_event(Event("delta", text=row.text[row.emitted : safe]))
        row.emitted = safe
    if final and row.finish != "cancelled":
        row.on_event(Event("done", result=_result(row)))


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def _safe_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of ``text`` can no longer change: not a half-decoded character, not a tail
    that a stop string could start with."""
    end = len(text.rstrip("\ufffd"))
    for stop in stops:
        for n in range(min(len(stop) - 1, end), 0, -1):
            if text[end - n : end] == stop[:n]:
                end -= n
                break
    return max(end, 0)


def _result(row: Row) -> Result:
    end = time.monotonic()
    decode_s = max(end - row.first_token, 1e-9)
    finish: FinishReason = row.finish or "stop"
    return Result(
        text=row.text,
        finish_reason=finish,
        prompt_tokens=len(row.prompt),
        completion_tokens=len(row.ids),
        timings={
            "queue_ms": (row.started - row.submitted) * 1000,
            "prefill_ms": (row.first_token - row.started) * 1000,
            "total_ms": (end - row.submitted) * 1000,
            "tokens_per_second": len(row.ids) / decode_s,
        },
    )
