"""The next-token choice for a batch whose rows each carry their own sampling parameters."""

from __future__ import annotations

import torch

from serving.params import GenerationParams


def make_generator(params: GenerationParams, device: torch.device) -> torch.Generator | None:
    """A generator seeded with ``params.seed`` (sampled rows only); ``None`` for greedy rows."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def choose_tokens(
    logits: torch.Tensor,
    seen: torch.Tensor,
    params: list[GenerationParams],
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """The next token of every row.

    Args:
        logits: ``(batch, vocab)`` scores of the last position (any float dtype).
        seen: ``(batch, vocab)`` bool, the tokens of each row's prompt and output so far (the
            repetition penalty applies to them, as transformers' processor does).
        params: one per row.
        generators: one per row, from :func:`make_generator`.

    Returns:
        ``(batch,)`` token ids.
    """
    scores = logits.float()
    penalties = [p.repetition_penalty for p in params]
    if any(p != 1.0 for p in penalties):
        penalty = scores.new_tensor(penalties).unsqueeze(1)
        penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
        scores = torch.where(seen, penalised, scores)
    chosen = scores.argmax(dim=-1)
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        if p.greedy:
            continue
        probs = torch.softmax(scores[row] / p.temperature, dim=-1)
        if p.top_p < 1.0:
            probs = _top_p(probs, p.top_p)
        chosen[row] = torch.multinomial(probs, 1, generator=generator)[0]
    return chosen


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p`` (at least one)."""
    sorted_probs, order = probs.sort(descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above
    sorted_probs = sorted_probs.masked_fill(before > top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return kept / kept.sum()
