"""The GLM-4 forward pass of the serving engine, over a transformers model's own weights.

transformers' forward is written for one batch at a time with a cache per call; the engine needs
rows that join and leave at every step, a paged cache shared by all of them, LoRA slots chosen
per row, and a decode step with fixed shapes that a CUDA graph can replay. This module computes
what ``GlmForCausalLM`` and ``Glm4ForCausalLM`` compute (RMSNorm in float32, partial interleaved
RoPE from the model's own rotary module, SwiGLU, GLM-4-0414's extra norms), token by token on a
flat ``(tokens, hidden)`` batch:

- :meth:`Glm.decode`: one new token per row, positions and block tables read on the device;
- :meth:`Glm.prefill`: the prompts of new rows packed together, each behind its P-Tuning v2
  prefix, whose keys and values are stored in the row's first cache entries as they are.

The query, key and value projections are fused into one matrix when the engine loads the
model; the model's own ``q_proj``/``k_proj``/``v_proj`` weights become views of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from transformers.activations import ACT2FN

from serving import fused, kernels
from serving.attention import decode_attention, prefill_attention, write_kv
from serving.kvcache import CacheShape, KVCache
from serving.lora import LoraPool

SUPPORTED = ("glm", "glm4")


class UnsupportedArchitectureError(ValueError):
    """A model the serving forward does not implement."""


@dataclass
class Layer:
    norm_in: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    norm_mid: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    norm_after_attn: torch.Tensor | None  # GLM-4-0414 only
    norm_after_mlp: torch.Tensor | None


@dataclass
class PrefillRow:
    """One new row: its prompt, where its cache entries go, and its prefix (if any)."""

    tokens: list[int]
    table: list[int]  # the row's blocks
    lora_slot: int = -1
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer, (P, kv, dim)

    @property
    def prefix_length(self) -> int:
        return int(self.prefix[0][0].shape[0]) if self.prefix else 0


class Glm:
    """The forward pass over ``model``'s weights, the ``cache`` and the ``lora`` pool; with
    ``fused_ops``, on a GPU, its elementwise work runs as :mod:`serving.fused`'s kernels."""

    def __init__(
        self,
        model: Any,
        cache: KVCache,
        lora: LoraPool,
        *,
        max_positions: int,
        fuse_qkv: bool = True,
        fused_ops: bool = True,
    ) -> None:
        config = model.config
        if config.model_type not in SUPPORTED:
            raise UnsupportedArchitectureError(
                f"model_type {config.model_type!r} is not served (served: {', '.join(SUPPORTED)})"
            )
        self.config, self.cache, self.lora = config, cache, lora
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.eps = config.rms_norm_eps
        self.act = ACT2FN[config.hidden_act]
        inner = model.model
        self.embed_tokens = inner.embed_tokens
        # a table kept in host memory (trainer.modeling.HostEmbedding) looks rows up on the CPU,
        # which a CUDA graph cannot capture
        self.graphable = isinstance(inner.embed_tokens, torch.nn.Embedding)
        self.norm = inner.norm.weight
        self.head = model.lm_head.weight
        self.layers = [_layer(layer, fuse=fuse_qkv) for layer in inner.layers]
        self.cos, self.sin = _rope_tables(inner.rotary_emb, max_positions, self.head)
        # the Triton kernels of serving.fused for the elementwise work (off: torch operations)
        self.fused = (
            fused_ops
            and kernels.available(self.head.device)
            and config.hidden_act == "silu"
            and self.head_dim & (self.head_dim - 1) == 0
        )

    @staticmethod
    def cache_shape(config: Any) -> CacheShape:
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        return CacheShape(config.num_hidden_layers, config.num_key_value_heads, head_dim)

    # ---- the two entry points -------------------------------------------------------------

    def decode(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        tables: torch.Tensor,
        lora_slots: torch.Tensor | None,
    ) -> torch.Tensor:
        """Logits ``(rows, vocab)`` of each row's next token, given its last token at cache
        index ``positions[row]`` (its key and value are stored there). Shapes only: a CUDA
        graph replays this for any batch of the same size."""
        block = self.cache.block_size
        slots = tables.gather(1, (positions // block)[:, None]).squeeze(1) * block
        slots = slots + positions % block
        lengths = (positions + 1).to(torch.int32)
        masks = self.lora.row_masks(lora_slots) if lora_slots is not None else None

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            write_kv(self.cache, layer, slots, k, v)
            return decode_attention(q, self.cache, layer, tables, lengths, self.scale)

        hidden = self._layers(self.embed_tokens(tokens), positions, attend, masks)
        return F.linear(hidden, self.head)

    def prefill(self, rows: list[PrefillRow]) -> torch.Tensor:
        """Store the rows' prefixes and prompts in the cache; logits ``(rows, vocab)`` of the
        token after each prompt."""
        device, block = self.head.device, self.cache.block_size
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        lora_slots: list[int] = []
        prefix_slots: list[int] = []
        bounds_q, bounds_k = [0], [0]
        for row in rows:
            start = row.prefix_length
            cache_index = range(start, start + len(row.tokens))
            tokens += row.tokens
            positions += cache_index
            slots += [row.table[i // block] * block + i % block for i in cache_index]
            prefix_slots += [row.table[i // block] * block + i % block for i in range(start)]
            lora_slots += [row.lora_slot] * len(row.tokens)
            bounds_q.append(bounds_q[-1] + len(row.tokens))
            bounds_k.append(bounds_k[-1] + start + len(row.tokens))
        ids = torch.tensor(tokens, device=device)
        where = torch.tensor(slots, device=device)
        where_prefix = torch.tensor(prefix_slots, dtype=torch.long, device=device)
        use_lora = bool(self.lora.groups) and any(row.lora_slot >= 0 for row in rows)
        masks = self.lora.row_masks(torch.tensor(lora_slots, device=device)) if use_lora else None
        prefixed = any(row.prefix for row in rows)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            write_kv(self.cache, layer, where, k, v)
            if not prefixed:
                return prefill_attention(q, k, v, bounds_q, bounds_q, self.scale)
            keys, values = _behind_prefixes(rows, layer, k, v, bounds_q)
            write_kv(self.cache, layer, where_prefix, *_prefixes(rows, layer))
            return prefill_attention(q, keys, values, bounds_q, bounds_k, self.scale)

        hidden = self._layers(
            self.embed_tokens(ids), torch.tensor(positions, device=device), attend, masks
        )
        last = torch.tensor(bounds_q[1:], device=device) - 1
        return F.linear(hidden[last], self.head)

    # ---- the layers -----------------------------------------------------------------------

    def _layers(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        attend: Any,
        masks: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        rope = None if self.fused else self._rope_at(positions)
        pending: torch.Tensor | None = None  # the last sub-layer's output, not yet added
        for index, layer in enumerate(self.layers):
            x, hidden = self._add_norm(pending, hidden, layer.norm_in)
            qkv = self._project("qkv", index, x, layer.qkv, masks, layer.qkv_bias)
            q, k, v = self._rotate(qkv, positions, rope)
            out = attend(index, q, k, v).reshape(hidden.shape[0], -1)
            attn = self._project("o_proj", index, out, layer.o, masks)
            if layer.norm_after_attn is not None:
                attn, _ = self._add_norm(None, attn, layer.norm_after_attn)
            x, hidden = self._add_norm(attn, hidden, layer.norm_mid)
            gate_up = self._project("gate_up_proj", index, x, layer.gate_up, masks)
            pending = self._project("down_proj", index, self._swiglu(gate_up), layer.down, masks)
            if layer.norm_after_mlp is not None:
                pending, _ = self._add_norm(None, pending, layer.norm_after_mlp)
        out, _ = self._add_norm(pending, hidden, self.norm)
        return out

    # ---- the elementwise work: Triton kernels on a GPU, torch operations elsewhere ---------

    def _add_norm(
        self, delta: torch.Tensor | None, hidden: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rms_norm(hidden + delta), hidden + delta)``; ``hidden`` alone without ``delta``."""
        if self.fused:
            return fused.add_rms_norm(hidden, delta, weight, self.eps)
        if delta is not None:
            hidden = hidden + delta
        return _rms(hidden, weight, self.eps), hidden

    def _rope_at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

    def _rotate(
        self,
        qkv: torch.Tensor,
        positions: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The queries and keys rotated and the values, per head, of the fused product."""
        tokens = qkv.shape[0]
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        v = qkv[:, q_size + kv_size :].view(tokens, self.kv_heads, self.head_dim)
        if rope is None:
            q, k = fused.rotate_qk(
                qkv, self.cos, self.sin, positions, self.heads, self.kv_heads, self.head_dim
            )
            return q, k, v
        q = qkv[:, :q_size].view(tokens, self.heads, self.head_dim)
        k = qkv[:, q_size : q_size + kv_size].view(tokens, self.kv_heads, self.head_dim)
        return _rotate(q, *rope), _rotate(k, *rope), v

    def _swiglu(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return fused.silu_mul(gate_up)
        gate, up = gate_up.chunk(2, -1)
        return up * self.act(gate)

    def _project(
        self,
        group: str,
        layer: int,
        x: torch.Tensor,
        weight: torch.Tensor,
        masks: dict[str, torch.Tensor] | None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = F.linear(x, weight, bias)
        if masks is not None and group in masks:
            out = self.lora.add_delta(out, group, layer, x, masks[group])
        return out


def _layer(layer: Any, *, fuse: bool) -> Layer:
    """The layer's weights, q/k/v as one matrix. With ``fuse`` the model's projections become
    views of it (no memory spent twice); without, it is a copy and the modules stay as they are
    (a model that goes on training)."""
    attn, mlp = layer.self_attn, layer.mlp
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    qkv = torch.cat([p.weight.detach() for p in projections])
    bias = None
    if attn.q_proj.bias is not None:
        bias = torch.cat([p.bias.detach() for p in projections])
    start = 0
    for p in projections if fuse else ():
        rows = p.weight.shape[0]
        p.weight.data = qkv[start : start + rows]
        if bias is not None:
            p.bias.data = bias[start : start + rows]
        start += rows
    extra = getattr(layer, "post_self_attn_layernorm", None)
    after_mlp = getattr(layer, "post_mlp_layernorm", None)
    return Layer(
        norm_in=layer.input_layernorm.weight.detach(),
        qkv=qkv,
        qkv_bias=bias,
        o=attn.o_proj.weight.detach(),
        norm_mid=layer.post_attention_layernorm.weight.detach(),
        gate_up=mlp.gate_up_proj.weight.detach(),
        down=mlp.down_proj.weight.detach(),
        norm_after_attn=extra.weight.detach() if extra is not None else None,
        norm_after_mlp=after_mlp.weight.detach() if after_mlp is not None else None,
    )


def _rope_tables(
    rotary: Any, positions: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own cos/sin for every position, halved and interleaved as GLM applies
    them (transformers' ``apply_rotary_pos_emb`` of the glm models)."""
    with torch.no_grad():
        ids = torch.arange(positions, device=like.device)[None, :]
        cos, sin = rotary(like[:1].unsqueeze(0), ids)
    cos, sin = cos[0], sin[0]
    half = cos.shape[-1] // 2
    return (
        cos[:, :half].repeat_interleave(2, dim=-1).contiguous(),
        sin[:, :half].repeat_interleave(2, dim=-1).contiguous(),
    )


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Partial interleaved RoPE on ``x`` ``(tokens, heads, dim)``, the operations of
    transformers' glm ``apply_rotary_pos_emb`` in their order."""
    dim = cos.shape[-1]
    rot, rest = x[..., :dim], x[..., dim:]
    half = torch.stack((-rot[..., 1::2], rot[..., 0::2]), dim=-1).flatten(-2)
    return torch.cat([(rot * cos) + (half * sin), rest], dim=-1)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' ``GlmRMSNorm``: normalised in float32, scaled in the input's dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _prefixes(rows: list[PrefillRow], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    keys = [row.prefix[layer][0] for row in rows if row.prefix]
    values = [row.prefix[layer][1] for row in rows if row.prefix]
    return torch.cat(keys), torch.cat(values)


def _behind_prefixes(
    rows: list[PrefillRow], layer: int, k: torch.Tensor, v: torch.Tensor, bounds: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed keys and values with each row's prefix ahead of its own."""
    keys, values = [], []
    for i, row in enumerate(rows):
        if row.prefix:
            keys.append(row.prefix[layer][0])
            values.append(row.prefix[layer][1])
        keys.append(k[bounds[i] : bounds[i + 1]])
        values.append(v[bounds[i] : bounds[i + 1]])
    return torch.cat(keys), torch.cat(values)
