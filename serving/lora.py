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
    for (layer, kind), pair in found.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{path}: layer {layer} {kind} lacks lora_A or lora_B")
        r = pair["A"].shape[0]
        if pair["A"].shape[1] != shapes[kind][0] or tuple(pair["B"].shape) != (shapes[kind][1], r):
            raise AdapterError(
                f"{path}: layer {layer} {kind} has shapes {tuple(pair['A'].shape)} and "
                f"{tuple(pair['B'].shape)}; the base model's projection is {shapes[kind]}"
            )
    rank = max(MIN_RANK, 1 << (max(p["A"].shape[0] for p in found.values()) - 1).bit_length())
    pin = torch.cuda.is_available()  # filled in place, then copied to the GPU without staging
    a, b = {}, {}
    for kind in sorted({k for _, k in found}):
        a[kind] = torch.zeros(layers, shapes[kind][0], rank, dtype=dtype, pin_memory=pin)
        b[kind] = torch.zeros(layers, rank, shapes[kind][1], dtype=dtype, pin_memory=pin)
        present = sorted(layer for layer, k in found if k == kind)
        by_rank: dict[int, list[int]] = {}
        for layer in present:  # one stacked copy per rank (rank_pattern may vary it)
            by_rank.setdefault(found[(layer, kind)]["A"].shape[0], []).append(layer)
        for r, group in by_rank.items():
            lora_a = torch.stack([found[(layer, kind)]["A"] for layer in group])  # (n, r, in)
            lora_b = torch.stack([found[(layer, kind)]["B"] for layer in group]).float()
            scale = torch.tensor([_scaling(config, f"layers.{layer}.{kind}", r) for layer in group])
            a[kind][group, :, :r] = lora_a.transpose(1, 2).to(dtype)
            b[kind][group, :r, :] = (lora_b * scale[:, None, None]).transpose(1, 2).to(dtype)
    return LoraWeights(rank, a, b)


def _scaling(config: Mapping[str, Any], module: str, rank: int) -> float:
    """PEFT's scaling of one module: its ``lora_alpha`` (``alpha_pattern`` may override it)
    over its rank, or over the rank's square root with rsLoRA."""
    alpha = float(config.get("lora_alpha", 8))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = float(value)
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


#: Projections whose LoRA products run as one: the attention's q/k/v are one fused matrix in
#: the serving forward, so their adapters are too (one product with ``A``, one with a
#: block-diagonal ``B``, instead of three of each).
GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o_proj": ("o_proj",),
    "gate_up_proj": ("gate_up_proj",),
    "down_proj": ("down_proj",),
}
_GROUP_OF = {kind: group for group, kinds in GROUPS.items() for kind in kinds}


class LoraPool:
    """``slots`` LoRA adapters on the model's device, one pool per projection group in use.

    A group's ``A`` is ``(layers, in, members * slots * rank)``: member ``i``'s slot ``s`` owns
    columns ``(i * slots + s) * rank`` onwards; its ``B`` is ``(layers, members * slots * rank,
    out)``, those rows writing member ``i``'s output columns only (block-diagonal). Pools of a
    group are allocated when the first adapter targeting it arrives, and grow to a larger rank
    when one needs it; both change tensors that captured graphs read, so :meth:`fit` reports it
    and the engine captures again.
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
        self.a: dict[str, torch.Tensor] = {}  # group -> (layers, in, members * slots * rank)
        self.b: dict[str, torch.Tensor] = {}  # group -> (layers, members * slots * rank, out)

    @property
    def groups(self) -> frozenset[str]:
        return frozenset(self.a)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.a.values(), *self.b.values()))

    def fit(self, weights: LoraWeights) -> bool:
        """Make room for ``weights``' projections and rank; True when tensors were reallocated.

        Raises:
            AdapterError: its rank is over ``max_rank``.
        """
        if weights.rank > self.max_rank:
            raise AdapterError(
                f"the adapter's rank needs {weights.rank} pool columns; this server serves up "
                f"to rank {self.max_rank} (GLMFT_CHAT__MAX_LORA_RANK)"
            )
        rank = max(self.rank, weights.rank)
        groups = self.groups | {_GROUP_OF[kind] for kind in weights.kinds}
        if rank == self.rank and groups == self.groups:
            return False
        old_rank, old_a, old_b = self.rank, self.a, self.b
        self.rank, self.a, self.b = rank, {}, {}
        for group in sorted(groups):
            members = GROUPS[group]
            width = len(members) * self.slots * rank
            out = sum(self.shapes[k][1] for k in members)
            self.a[group] = self._zeros(self.shapes[members[0]][0], width)
            self.b[group] = self._zeros(width, out)
        for group in old_a:
            for member in range(len(GROUPS[group])):
                for slot in range(self.slots):
                    new = self._columns(member, slot, old_rank)
                    start = old_rank * (member * self.slots + slot)
                    old = slice(start, start + old_rank)
                    self.a[group][:, :, new] = old_a[group][:, :, old]
                    self.b[group][:, new] = old_b[group][:, old]
        return True

    def _zeros(self, rows: int, cols: int) -> torch.Tensor:
        return torch.zeros(self.layers, rows, cols, dtype=self.dtype, device=self.device)

    def _columns(self, member: int, slot: int, width: int | None = None) -> slice:
        """Columns of ``A`` (rows of ``B``) of a group's ``member`` in ``slot``."""
        start = (member * self.slots + slot) * self.rank
        return slice(start, start + (self.rank if width is None else width))

    def _outputs(self, kind: str) -> slice:
        """The output columns of ``kind`` in its group's ``B``."""
        members = GROUPS[_GROUP_OF[kind]]
        start = sum(self.shapes[k][1] for k in members[: members.index(kind)])
        return slice(start, start + self.shapes[kind][1])

    def write(self, slot: int, weights: LoraWeights) -> None:
        """Copy ``weights`` into ``slot`` (after :meth:`fit`); projections it lacks are zeroed."""
        self.clear(slot)
        for kind, a in weights.a.items():
            group = _GROUP_OF[kind]
            cols = self._columns(GROUPS[group].index(kind), slot, weights.rank)
            self.a[group][:, :, cols].copy_(a, non_blocking=True)
            self.b[group][:, cols, self._outputs(kind)].copy_(weights.b[kind], non_blocking=True)

    def clear(self, slot: int) -> None:
        for group, members in GROUPS.items():
            if group in self.a:
                for member in range(len(members)):
                    cols = self._columns(member, slot)
                    self.a[group][:, :, cols].zero_()
                    self.b[group][:, cols].zero_()

    def holds(self, slot: int) -> bool:
        """Whether any weight of ``slot`` is non-zero."""
        return any(
            bool(self.a[group][:, :, cols].any() or self.b[group][:, cols].any())
            for group, members in GROUPS.items()
            if group in self.a
            for cols in (self._columns(m, slot) for m in range(len(members)))
        )

    def row_masks(self, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per group in use, ``(rows, members * slots * rank)`` ones over each row's slot
        columns of every member; ``slots`` holds a slot index per row, or -1 for a row without
        an adapter. Built once a forward pass, for all its layers."""
        onehot = slots[:, None] == torch.arange(self.slots, device=slots.device)[None, :]
        mask = onehot.to(self.dtype).repeat_interleave(self.rank, dim=1)
        wide = {members: mask.repeat(1, members) for members in {len(GROUPS[g]) for g in self.a}}
        return {group: wide[len(GROUPS[group])] for group in self.a}

    def add_delta(
        self, out: torch.Tensor, group: str, layer: int, x: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``out`` plus the LoRA output of projection ``group`` of ``layer`` for rows ``x``
        ``(rows, in)``, each through the slot ``mask`` (from :meth:`row_masks`) selects; the
        sum is taken by the second product itself, in place."""
        return out.addmm_((x @ self.a[group][layer]) * mask, self.b[group][layer])
