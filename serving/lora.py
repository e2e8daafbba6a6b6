"""LoRA adapters as slots of one pool per projection, applied to a whole batch at once.

A pool holds, for every layer, the ``A`` matrices of all slots side by side (``in x slots*rank``)
and their ``B`` matrices stacked (``slots*rank x out``, scaling folded in). A batch's LoRA delta
is then two matrix products whatever the number of distinct adapters in it: the rows' inputs
times every slot's ``A``, masked to each row's own slot, times every slot's ``B``. Rows without an
adapter have an all-zero mask. Loading an adapter writes its tensors into a free slot: no module
of the model changes, and CUDA graphs captured over the pool stay valid.

:func:`read_lora` turns a PEFT checkpoint into the pool's layout on the CPU, away from the step
loop; :meth:`LoraPool.write` then copies it into a slot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from serving.adapters import AdapterError, read_adapter_config
from serving.weights import adapter_weights

#: The projections of a GLM-4 decoder layer a LoRA adapter may target (transformers' names).
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
MIN_RANK = 8


def projection_shapes(config: Any) -> dict[str, tuple[int, int]]:
    """``(in, out)`` features of each projection kind for a GLM-4 config."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    inter = config.intermediate_size
    return {
        "q_proj": (hidden, q),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (q, hidden),
        "gate_up_proj": (hidden, 2 * inter),
        "down_proj": (inter, hidden),
    }


@dataclass
class LoraWeights:
    """One adapter in the pool's layout: ``a[kind]`` ``(layers, in, rank)``, ``b[kind]``
    ``(layers, rank, out)`` with the scaling folded in; layers it does not touch are zero."""

    rank: int
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self.a)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.a.values(), *self.b.values()))


def read_lora(path: Path, model_config: Any, dtype: torch.dtype) -> LoraWeights:
    """A PEFT LoRA checkpoint in the pool's layout (CPU tensors, pinned when a GPU exists).

    Raises:
        AdapterError: a LoRA variant the pool cannot serve (DoRA, LoRA biases, modules saved
            whole, a module that is not a decoder projection) or a shape the base does not have.
    """
    config = read_adapter_config(path)
    if config.get("use_dora") or config.get("lora_bias") or config.get("modules_to_save"):
        raise AdapterError(
            f"{path}: DoRA, LoRA biases and modules_to_save are not served (plain LoRA only)"
        )
    shapes = projection_shapes(model_config)
    layers = model_config.num_hidden_layers
    found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in adapter_weights(path).items():
        match = _KEY.search(key)
        if match is None or match.group(2) not in shapes:
            raise AdapterError(f"{path}: {key} is not a LoRA weight of a decoder projection")
        layer, kind, which = int(match.group(1)), match.group(2), match.group(3)
        if layer >= layers:
            raise AdapterError(f"{path}: {key} is for layer {layer}; the base has {layers}")
        found.setdefault((layer, kind), {})[which] = tensor
    if not found:
        raise AdapterError(f"{path}: no LoRA weights")
    ranks = {pair["A"].shape[0] for pair in found.values() if "A" in pair}
    rank = max(MIN_RANK, 1 << (max(ranks) - 1).bit_length())
    a = {k: torch.zeros(layers, shapes[k][0], rank, dtype=dtype) for _, k in found}
    b = {k: torch.zeros(layers, rank, shapes[k][1], dtype=dtype) for _, k in found}
    for (layer, kind), pair in found.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{path}: layer {layer} {kind} lacks lora_A or lora_B")
        lora_a, lora_b = pair["A"].float(), pair["B"].float()  # (r, in), (out, r)
        r = lora_a.shape[0]
        if lora_a.shape[1] != shapes[kind][0] or lora_b.shape != (shapes[kind][1], r):
            raise AdapterError(
                f"{path}: layer {layer} {kind} has shapes {tuple(lora_a.shape)} and "
                f"{tuple(lora_b.shape)}; the base model's projection is {shapes[kind]}"
            )
        scaling = _scaling(config, f"layers.{layer}.{kind}", r)
        a[kind][layer, :, :r] = lora_a.T.to(dtype)
        b[kind][layer, :r, :] = (lora_b * scaling).T.to(dtype)
    if torch.cuda.is_available():
        a = {k: t.pin_memory() for k, t in a.items()}
        b = {k: t.pin_memory() for k, t in b.items()}
    return LoraWeights(rank, a, b)


def _scaling(config: Mapping[str, Any], module: str, rank: int) -> float:
    """PEFT's scaling of one module: its ``lora_alpha`` (``alpha_pattern`` may override it)
    over its rank, or over the rank's square root with rsLoRA."""
    alpha = float(config.get("lora_alpha", 8))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = float(value)
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


class LoraPool:
    """``slots`` LoRA adapters on the model's device, one pool per projection kind in use.

    Pools of a kind are allocated when the first adapter targeting it arrives, and grow to a
    larger rank when one needs it; both change tensors that captured graphs read, so
    :meth:`fit` reports it and the engine captures again.
    """

    def __init__(
        self,
        config: Any,
        *,
        slots: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.slots, self.max_rank = slots, max_rank
        self.dtype, self.device = dtype, device
        self.layers = config.num_hidden_layers
        self.shapes = projection_shapes(config)
        self.rank = 0
        self.a: dict[str, torch.Tensor] = {}  # kind -> (layers, in, slots * rank)
        self.b: dict[str, torch.Tensor] = {}  # kind -> (layers, slots * rank, out)

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self.a)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.a.values(), *self.b.values()))

    def fit(self, weights: LoraWeights) -> bool:
        """Make room for ``weights``' kinds and rank; True when tensors were reallocated.

        Raises:
            AdapterError: its rank is over ``max_rank``.
        """
        if weights.rank > self.max_rank:
            raise AdapterError(
                f"the adapter's rank needs {weights.rank} pool columns; this server serves up "
                f"to rank {self.max_rank} (GLMFT_CHAT__MAX_LORA_RANK)"
            )
        rank = max(self.rank, weights.rank)
        kinds = self.kinds | weights.kinds
        if rank == self.rank and kinds == self.kinds:
            return False
        old_rank, old_a, old_b = self.rank, self.a, self.b
        self.rank = rank
        self.a = {k: self._zeros(self.shapes[k][0], self.slots * rank) for k in sorted(kinds)}
        self.b = {k: self._zeros(self.slots * rank, self.shapes[k][1]) for k in sorted(kinds)}
        for kind in old_a:
            for slot in range(self.slots):
                new, old = self._columns(slot, rank), self._columns(slot, old_rank, old_rank)
                self.a[kind][:, :, new][:, :, :old_rank] = old_a[kind][:, :, old]
                self.b[kind][:, new][:, :old_rank] = old_b[kind][:, old]
        return True

    def _zeros(self, rows: int, cols: int) -> torch.Tensor:
        return torch.zeros(self.layers, rows, cols, dtype=self.dtype, device=self.device)

    def _columns(self, slot: int, rank: int, width: int | None = None) -> slice:
        return slice(slot * rank, slot * rank + (width or rank))

    def write(self, slot: int, weights: LoraWeights) -> None:
        """Copy ``weights`` into ``slot`` (after :meth:`fit`); kinds it lacks are zeroed."""
        self.clear(slot)
        cols = self._columns(slot, self.rank, weights.rank)
        for kind, a in weights.a.items():
            self.a[kind][:, :, cols].copy_(a, non_blocking=True)
            self.b[kind][:, cols].copy_(weights.b[kind], non_blocking=True)

    def clear(self, slot: int) -> None:
        cols = self._columns(slot, self.rank)
        for kind in self.a:
            self.a[kind][:, :, cols].zero_()
            self.b[kind][:, cols].zero_()

    def row_mask(self, slots: torch.Tensor) -> torch.Tensor:
        """``(rows, slots * rank)`` ones over each row's slot columns; ``slots`` holds a slot
        index per row, or -1 for a row without an adapter."""
        onehot = slots[:, None] == torch.arange(self.slots, device=slots.device)[None, :]
        return onehot.to(self.dtype).repeat_interleave(self.rank, dim=1)

    def delta(self, kind: str, layer: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The LoRA output of projection ``kind`` of ``layer`` for rows ``x`` ``(rows, in)``,
        each through the slot ``mask`` (from :meth:`row_mask`) selects."""
        return ((x @ self.a[kind][layer]) * mask) @ self.b[kind][layer]
