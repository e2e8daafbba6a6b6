"""Peak GPU memory of a training step, estimated from the model's config and the dataset before
any GPU time is spent, and the measures a ``memory_budget_gib`` takes to fit it: the input
embedding in host memory, gradient checkpointing, smaller loss chunks, then the batch split into
gradient-accumulation micro-batches (same conversations per optimizer step).

The estimate counts what ``torch.cuda.max_memory_allocated`` sees on one rank:

- the weights, in the compute dtype (sharded under ZeRO-3);
- the trainable parameters' gradients and AdamW states (fp32 for adapters, DeepSpeed's fp32
  master weights and states for full SFT, sharded as the ZeRO stage says, none on the GPU when
  offloaded);
- the activations kept for the backward pass of the largest batch the data can form: every
  decoder layer's saved tensors without checkpointing, one bf16 hidden state per layer plus one
  layer being recomputed with it;
- the loss: all ``tokens x vocab`` logits in bf16 and float32 with their gradients, or one chunk
  of them with ``chunked_loss``.

The saved-tensor count per layer is an analytic model of transformers' ``GlmDecoderLayer`` with
SDPA attention; ``bench/train_bench.py`` prints it next to the measured peak for every run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trainer.config import FinetuningConfig, resolve_config_path

GIB = 2**30
# Target positions whose logits the chunked loss computes at once, unless the plan shrinks it.
CHUNK_TOKENS = 1024
_ADAM_FP32_BYTES = 16  # fp32 param + grad + two AdamW moments, per trainable adapter parameter
_LOSS_BYTES = 12  # bf16 logits + float32 copy + log-softmax + their gradients, per logit


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        return cls(
            layers=int(config["num_hidden_layers"]),
            hidden=hidden,
            intermediate=int(config["intermediate_size"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    def module_dims(self) -> dict[str, tuple[int, int]]:
        """``name: (in_features, out_features)`` of each decoder-layer linear."""
        h, q, kv, f = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_up_proj": (h, 2 * f),
            "down_proj": (f, h),
        }

    @property
    def params(self) -> int:
        per_layer = sum(i * o for i, o in self.module_dims().values()) + 2 * self.hidden
        per_layer += self.heads * self.head_dim + 2 * self.kv_heads * self.head_dim  # qkv biases
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * per_layer + embeddings + self.hidden

    def layer_activation_bytes(self, *, lora_dropout: bool, dtype_bytes: int) -> int:
        """Bytes one token leaves saved for backward in one decoder layer."""
        h, q, kv, f = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        # two RMSNorms (input and output), q/k/v before and after RoPE, SDPA's output (o_proj's
        # input; GQA keys/values repeated to the query heads), SwiGLU's gate_up output and
        # its activation (down_proj's input)
        elements = 4 * h + 2 * (q + 2 * kv) + 2 * q + q + 3 * f
        extra = 0
        if lora_dropout:  # each of the q/k/v adapters keeps its dropped input and a bool mask
            elements += 3 * h
            extra = 3 * h
        return elements * dtype_bytes + extra


@dataclass(frozen=True)
class ZeroSetup:
    """What a DeepSpeed config does to memory: its ZeRO stage and offloads."""

    stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False

    @classmethod
    def from_deepspeed(cls, ds: dict[str, Any] | None) -> ZeroSetup:
        zero = (ds or {}).get("zero_optimization") or {}

        def offloaded(key: str) -> bool:
            device = (zero.get(key) or {}).get("device", "none")
            return str(device) in ("cpu", "nvme")

        return cls(
            stage=int(zero.get("stage", 0)),
            offload_optimizer=offloaded("offload_optimizer"),
            offload_params=offloaded("offload_param"),
        )


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate in bytes, and the measures taken to fit the budget."""

    budget_bytes: int | None
    weights: int
    embedding: int  # the input embedding's share of ``weights``
    training_state: int
    layers: int
    # activations saved for the backward pass: by a decoder layer that keeps its own, by a
    # checkpointed one (its input), for the recomputation of one layer, and once a step
    layer_plain: int
    layer_checkpointed: int
    recompute: int
    fixed: int
    loss_bytes_per_token: int
    loss_tokens: int  # tokens whose logits exist at once
    tokens_per_step: int
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1  # with checkpointing: layers 0, n, 2n, ... (transformers' rule)
    host_embeddings: bool = False
    loss_chunk_tokens: int = CHUNK_TOKENS
    micro_batches: int = 1  # the batch runs as this many accumulation steps

    @property
    def checkpointed_layers(self) -> int:
        if not self.gradient_checkpointing:
            return 0
        return -(-self.layers // self.checkpoint_every)

    def activations(self, checkpointed_layers: int) -> int:
        plain = (self.layers - checkpointed_layers) * self.layer_plain
        checkpointed = checkpointed_layers * self.layer_checkpointed
        return plain + checkpointed + (self.recompute if checkpointed_layers else 0) + self.fixed

    def total(
        self, *, checkpointed_layers: int, host_embeddings: bool, loss_tokens: int | None = None
    ) -> int:
        weights = self.weights - (self.embedding if host_embeddings else 0)
        loss = (
            self.loss_tokens if loss_tokens is None else loss_tokens
        ) * self.loss_bytes_per_token
        return weights + self.training_state + self.activations(checkpointed_layers) + loss

    @property
    def estimate(self) -> int:
        return self.total(
            checkpointed_layers=self.checkpointed_layers, host_embeddings=self.host_embeddings
        )

    @property
    def over_budget(self) -> bool:
        return self.budget_bytes is not None and self.estimate > self.budget_bytes

    def as_event(self) -> dict[str, Any]:
        """The plan for the ``started`` event, in GiB."""

        def gib(value: int) -> float:
            return round(value / GIB, 2)

        return {
            "gradient_checkpointing": self.gradient_checkpointing,
            "checkpointed_layers": self.checkpointed_layers,
            "checkpoint_every": self.checkpoint_every,
            "host_embeddings": self.host_embeddings,
            "loss_chunk_tokens": self.loss_chunk_tokens,
            "micro_batches": self.micro_batches,
            "estimate_gib": gib(self.estimate),
            "budget_gib": None if self.budget_bytes is None else gib(self.budget_bytes),
            "over_budget": self.over_budget,
            "without_measures_gib": gib(self.total(checkpointed_layers=0, host_embeddings=False)),
            "weights_gib": gib(self.weights),
            "training_state_gib": gib(self.training_state),
            "loss_gib": gib(self.loss_tokens * self.loss_bytes_per_token),
            "tokens_per_step": self.tokens_per_step,
        }


def largest_step_tokens(lengths: list[int], batch_size: int, *, packing: bool) -> tuple[int, int]:
    """``(tokens, rows)`` of the largest batch ``lengths`` can form: the ``batch_size`` longest
    conversations in one row when packed, else as many rows padded to the longest."""
    longest = sorted(lengths, reverse=True)[: max(1, batch_size)]
    if not longest:
        return 0, 0
    if packing:
        return sum(longest), 1
    return longest[0] * len(longest), len(longest)


def trainable_params(shape: ModelShape, peft: dict[str, Any] | None) -> int:
    if peft is None:
        return shape.params
    if str(peft.get("peft_type", "")).upper() == "PREFIX_TUNING":
        return (
            int(peft.get("num_virtual_tokens", 0))
            * shape.layers
            * 2
            * shape.kv_heads
            * shape.head_dim
        )
    rank = int(peft.get("r", 8))
    targets = peft.get("target_modules") or []
    dims = shape.module_dims()
    per_layer = sum(rank * sum(dims[name]) for name in targets if name in dims)
    return shape.layers * per_layer


def plan_memory(
    model_config: dict[str, Any],
    peft: dict[str, Any] | None,
    *,
    lengths: list[int],
    batch_size: int,
    packing: bool,
    chunked_loss: bool,
    dtype_bytes: int,
    budget_gib: float | None,
    gradient_checkpointing: bool | None = None,
    deepspeed: dict[str, Any] | None = None,
    world_size: int = 1,
    split_batch: bool = True,
) -> MemoryPlan:
    """Estimate one rank's peak. With ``budget_gib`` and no explicit ``gradient_checkpointing``,
    take the measures the step needs to fit it (:func:`_fit`); if they are not enough and
    ``split_batch``, split the batch into the fewest micro-batches that fit (a divisor of
    ``batch_size``; one conversation each at most). Without a budget, no measures, as upstream."""
    if split_batch:

        def plan_batch(size: int) -> MemoryPlan:
            return plan_memory(
                model_config,
                peft,
                lengths=lengths,
                batch_size=size,
                packing=packing,
                chunked_loss=chunked_loss,
                dtype_bytes=dtype_bytes,
                budget_gib=budget_gib,
                gradient_checkpointing=gradient_checkpointing,
                deepspeed=deepspeed,
                world_size=world_size,
                split_batch=False,
            )

        plan = plan_batch(batch_size)
        if plan.over_budget and gradient_checkpointing is None:
            for parts in (p for p in range(2, batch_size + 1) if batch_size % p == 0):
                plan = replace(plan_batch(batch_size // parts), micro_batches=parts)
                if not plan.over_budget:
                    break
        return plan
    shape = ModelShape.from_config(model_config)
    zero = ZeroSetup.from_deepspeed(deepspeed)
    world = max(1, world_size)
    tokens, rows = largest_step_tokens(lengths, batch_size, packing=packing)
    weights = shape.params * dtype_bytes
    trainable = trainable_params(shape, peft)
    if peft is not None:
        state = trainable * _ADAM_FP32_BYTES
    elif zero.stage == 0:
        state = trainable * 3 * dtype_bytes  # gradients and two AdamW moments in the model dtype
    else:
        # DeepSpeed bf16: fp32 master weights + two moments (12 bytes) and the gradients
        optimizer = 0 if zero.offload_optimizer else trainable * 12 // world
        gradients = trainable * dtype_bytes // (world if zero.stage >= 2 else 1)
        state = optimizer + gradients
    if zero.stage >= 3:
        weights = 0 if zero.offload_params else weights // world
    lora_dropout = peft is not None and float(peft.get("lora_dropout", 0) or 0) > 0
    per_layer = shape.layer_activation_bytes(lora_dropout=lora_dropout, dtype_bytes=dtype_bytes)
    layer_prefix = prefix_output = 0
    if peft is not None and str(peft.get("peft_type", "")).upper() == "PREFIX_TUNING":
        # a layer's prefix keys/values repeated to the query heads inside SDPA (kept by a layer
        # that is not checkpointed; packed, one copy per conversation: trainer.attention), and
        # the prefix encoder's output (every layer's KV heads, once per row)
        per_row = int(peft.get("num_virtual_tokens", 0)) * 2 * shape.head_dim
        copies = max(1, batch_size) if packing else rows
        layer_prefix = copies * per_row * shape.heads * dtype_bytes
        prefix_output = rows * per_row * shape.layers * shape.kv_heads * dtype_bytes
    plan = MemoryPlan(
        budget_bytes=None if budget_gib is None else int(budget_gib * GIB),
        weights=weights,
        embedding=shape.vocab * shape.hidden * dtype_bytes if zero.stage < 3 else 0,
        training_state=state,
        layers=shape.layers,
        layer_plain=tokens * per_layer + layer_prefix,
        layer_checkpointed=tokens * shape.hidden * dtype_bytes,
        recompute=2 * tokens * per_layer + layer_prefix,
        fixed=prefix_output,
        loss_bytes_per_token=shape.vocab * _LOSS_BYTES,
        loss_tokens=min(tokens, CHUNK_TOKENS) if chunked_loss else tokens,
        tokens_per_step=tokens,
        gradient_checkpointing=bool(gradient_checkpointing),
    )
    if plan.budget_bytes is None or gradient_checkpointing is not None:
        return plan
    return _fit(plan, peft, shape, chunked_loss=chunked_loss)


def _fit(
    plan: MemoryPlan, peft: dict[str, Any] | None, shape: ModelShape, *, chunked_loss: bool
) -> MemoryPlan:
    """Take the cheapest measures, in order, until the plan fits its budget: the frozen input
    embedding to host memory (adapters only; one small copy a step), gradient checkpointing of
    as few layers as fit (each recomputes its forward pass: up to a third more compute; P-Tuning
    v2 too, its prefix served by ``trainer.prefix``), then smaller loss chunks (down to 128)."""
    budget = plan.budget_bytes
    if budget is None or plan.estimate <= budget:
        return plan
    if peft is not None and not shape.tied and plan.embedding:
        plan = replace(plan, host_embeddings=True)
    if plan.estimate > budget:  # as few checkpointed layers as fit: every n-th, n largest first
        for every in range(plan.layers, 0, -1):
            plan = replace(plan, gradient_checkpointing=True, checkpoint_every=every)
            if plan.estimate <= budget:
                break
    chunk = plan.loss_chunk_tokens
    while chunked_loss and plan.estimate > budget and chunk > 128:
        chunk //= 2
        plan = replace(plan, loss_chunk_tokens=chunk, loss_tokens=min(plan.tokens_per_step, chunk))
    return plan


def plan_for_config(
    config: FinetuningConfig,
    model_config: dict[str, Any],
    lengths: list[int],
    *,
    config_path: Path | None,
    dtype_bytes: int,
    world_size: int,
) -> MemoryPlan:
    """:func:`plan_memory` for a run of ``config`` over training rows of ``lengths`` tokens."""
    ta = config.training_args
    deepspeed = None
    if ta.get("deepspeed"):
        path = resolve_config_path(str(ta["deepspeed"]), config_path)
        deepspeed = json.loads(path.read_text(encoding="utf-8"))
    given = ta.get("activation_checkpointing", ta.get("gradient_checkpointing"))
    return plan_memory(
        model_config,
        config.peft_config,
        lengths=lengths,
        batch_size=config.batch_size,
        packing=config.packing,
        chunked_loss=config.chunked_loss,
        dtype_bytes=dtype_bytes,
        budget_gib=config.memory_budget_gib,
        gradient_checkpointing=None if given is None else bool(given),
        deepspeed=deepspeed,
        world_size=world_size,
    )
