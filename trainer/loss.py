"""A memory-lean causal LM loss for GLM-4's 151k vocabulary: the logits are computed only at
positions that have a target, a chunk at a time, and recomputed in the backward pass instead of
kept, so the full ``(tokens, vocab)`` float32 logits never exist.

The result equals transformers' ``ForCausalLMLoss`` (the sum of token cross-entropies over
``num_items_in_batch``); only the memory differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
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
    PEFT wrappers (LoRA, P-Tuning v2) and on a ZeRO-3 partitioned head: the head module is
    called once for all chunks, so its weight is gathered once a step, not once a chunk.
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
    total = _head_cross_entropy_sum(head, states, targets, chunk_tokens)
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    if isinstance(count, torch.Tensor):
        count = count.to(total.device)
    return total / count


def _head_cross_entropy_sum(
    head: torch.nn.Module, states: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """The summed cross-entropy of ``head(states)`` against ``targets``, chunk by chunk.

    A plain linear head runs every chunk inside one call of the head module. Module calls are
    where DeepSpeed ZeRO-3 gathers a partitioned weight (and, in the backward pass, gathers it
    again and reduce-scatters its gradient): one call per chunk cost three transfers of the
    1.2 GB head per chunk, which made them most of a ZeRO-3 step. One call is also the same
    number of collectives on every rank, whatever each rank's count of target tokens. Other
    heads (a PEFT-wrapped one) are called once per chunk.
    """

    def chunks(
        linear: Callable[[torch.Tensor], torch.Tensor], states: torch.Tensor
    ) -> torch.Tensor:
        total = states.new_zeros((), dtype=torch.float32)
        # at least one chunk, empty when there are no targets, so the sum depends on the weight
        for start in range(0, max(targets.numel(), 1), chunk_tokens):
            piece = slice(start, start + chunk_tokens)
            total = total + checkpoint(
                _cross_entropy_sum, linear, states[piece], targets[piece], use_reentrant=False
            )
        return total

    if type(head) is not torch.nn.Linear:
        return chunks(head, states)
    weight, bias = head.weight, head.bias
    # the states the hooks hand to the forward (ZeRO-3 wraps them to release the weight after
    # their gradient), not the ones passed in
    return _call_as(
        head, lambda hooked: chunks(lambda x: F.linear(x, weight, bias), hooked), states
    )


def _call_as(
    module: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """``forward(x)`` run as ``module(x)``: through the module's hooks (ZeRO-3's gather and
    release), with ``forward`` in place of the module's own for this one call."""
    own = module.__dict__.get("forward")  # accelerate may have set an instance forward
    module.forward = forward
    try:
        result: torch.Tensor = module(x)
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own
    return result


def _cross_entropy_sum(
    linear: Callable[[torch.Tensor], torch.Tensor], states: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    return F.cross_entropy(linear(states).float(), targets, reduction="sum")
