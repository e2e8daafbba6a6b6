"""A memory-lean causal LM loss for GLM-4's 151k vocabulary: the logits are computed only at
positions that have a target, a chunk at a time, and recomputed in the backward pass instead of
kept, so the full ``(tokens, vocab)`` float32 logits never exist.

The result equals transformers' ``ForCausalLMLoss`` (the sum of token cross-entropies over
``num_items_in_batch``); only the memory differs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch.utils.checkpoint import checkpoint

from trainer.memory import CHUNK_TOKENS
from trainer.modeling import base_model
from trainer.template import IGNORE_INDEX


def chunked_causal_lm_loss(
    model: Any,
    inputs: dict[str, torch.Tensor],
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> torch.Tensor:
    """The loss of ``model`` on ``inputs`` (with ``labels``), without materialising all logits.

    The model runs with ``logits_to_keep=1`` (one position of logits) and its final hidden
    states are taken from the decoder's last norm; the output head then runs on the target
    positions only, ``chunk_tokens`` at a time under activation checkpointing. Works through
    PEFT wrappers (LoRA, P-Tuning v2) and on a ZeRO-3 partitioned head (it is called as a
    module, so its parameters are gathered).
    """
    labels = inputs["labels"]
    forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    captured: list[torch.Tensor] = []
    # The final norm's output, captured by a hook rather than through output_hidden_states:
    # accelerate's mixed precision converts every output of the wrapped forward to float32.
    norm = base_model(model).get_decoder().norm
    handle = norm.register_forward_hook(lambda _module, _args, out: captured.append(out))
    try:
        model(**forward_inputs, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    head = model.get_output_embeddings()
    hidden = captured[-1]
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    states = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    keep = targets != IGNORE_INDEX
    states, targets = states[keep], targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    chunks = _chunks_on_every_rank(-(-targets.numel() // chunk_tokens), head, hidden.device)
    for start in range(0, chunks * chunk_tokens, chunk_tokens):
        piece = slice(start, start + chunk_tokens)  # empty past this rank's targets
        total = total + checkpoint(
            _cross_entropy_sum, head, states[piece], targets[piece], use_reentrant=False
        )
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    if isinstance(count, torch.Tensor):
        count = count.to(total.device)
    return total / count


def _chunks_on_every_rank(chunks: int, head: torch.nn.Module, device: torch.device) -> int:
    """The most chunks any rank has. Under ZeRO-3 every call of the partitioned head gathers its
    weight, a collective: ranks with fewer target tokens run empty chunks so that all ranks call
    it equally often (else their collectives mismatch and the run aborts)."""
    partitioned = any(hasattr(p, "ds_id") for p in head.parameters())
    if not (partitioned and dist.is_available() and dist.is_initialized()):
        return chunks
    most = torch.tensor(chunks, device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most.item())


def _cross_entropy_sum(head: Any, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(states).float(), targets, reduction="sum")
