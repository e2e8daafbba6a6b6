"""Regional compilation (``compile: true``): each decoder layer's training forward runs through
``torch.compile``, so inductor fuses the elementwise work around the matrix products (LoRA
dropout and scaling, RMSNorm, RoPE, SwiGLU, residual adds, dtype casts) and launches fewer kernels.

Only the decoder layers are compiled, not the model. They share their code, so one compiled graph
serves every layer: the first layer's input is made to require grad like the others', and
nothing a layer reads in training differs between layers. Shapes are dynamic from the start
(``dynamic=True``), so a packed batch whose length changes every step reuses the graph; so does
the varlen attention of packed rows on a GPU (a torch custom op: no graph break). Gradient
checkpointing wraps the compiled forward, as transformers wraps the eager one. Evaluation and
generation (``model.eval()``, no grad) run the eager forward. P-Tuning v2's prefix, a KV cache
indexed by layer, reaches each compiled layer as that layer's own slice, handed over outside the
graph (:mod:`trainer.prefix`), so it shares the graph too.

Under DeepSpeed ZeRO-3 the layers cannot be compiled whole: ZeRO-3 gathers each submodule's
parameters in hooks that dynamo cannot trace, so every layer breaks into per-module graphs that
recompile per module (87 compiles, 33 graph breaks for the 2-layer tiny model on CPU) and a real
model runs past the recompile limit, mostly uncompiled. There the elementwise functions between
the hooked matrix products are compiled instead (:func:`compile_layer_functions`): RMSNorm, the
SwiGLU gate and RoPE, each one graph for every layer.
"""

from __future__ import annotations

import logging
import sys
import types
from functools import partial
from typing import Any

import torch
from transformers import TrainingArguments

from trainer.modeling import base_model, decoder_layers
from trainer.prefix import LayerPrefix, PrefixByLayer

logger = logging.getLogger(__name__)


def compile_model(model: Any, args: TrainingArguments) -> int:
    """``compile: true``: the decoder layers whole, or under ZeRO-3 their elementwise functions
    (the module docstring says why); returns how many layers."""
    ds_config = getattr(args, "hf_deepspeed_config", None)
    if ds_config is not None and ds_config.is_zero3():
        return compile_layer_functions(model)
    return compile_decoder_layers(model)


class CompiledForward:
    """A decoder layer's ``forward``: compiled while it trains with grad and no KV cache, eager
    otherwise.

    Gradient checkpointing stays outside the compiled graph: transformers' wrapper
    (``GradientCheckpointingLayer``) checkpoints the layer's own forward, so that forward is
    what is compiled, and it is checkpointed here as the wrapper would. The recomputation runs
    the same graph with the same random state (the dropout masks repeat). Inside the graph, as a
    higher-order op, torch 2.11's partitioner failed on an H200 for a checkpointed layer with
    LoRA dropout ("Node add_607 was invalid, but is output").
    """

    def __init__(self, layer: torch.nn.Module) -> None:
        self.layer = layer
        self.eager = types.MethodType(type(layer).forward, layer)  # with transformers' wrapper
        inner = getattr(type(layer).forward, "__wrapped__", type(layer).forward)
        self.compiled = torch.compile(types.MethodType(inner, layer), dynamic=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        layer = self.layer
        cache = kwargs.get("past_key_values")
        # a real KV cache (P-Tuning v2's prefix arrives as a LayerPrefix: trainer.prefix)
        kv_cache = cache is not None and not isinstance(cache, LayerPrefix)
        if kv_cache or not (layer.training and torch.is_grad_enabled()):
            return self.eager(*args, **kwargs)
        if getattr(layer, "gradient_checkpointing", False):
            return layer._gradient_checkpointing_func(partial(self.compiled, **kwargs), *args)
        return self.compiled(*args, **kwargs)


def compile_decoder_layers(model: Any) -> int:
    """Compile ``model``'s decoder layers in place (on their first training call, so after the
    Trainer has turned on gradient checkpointing); returns how many."""
    layers = decoder_layers(model)
    # As for gradient checkpointing: the embedding's output requires grad, so the first layer
    # runs the same graph as the others (else it is a second compile of the whole layer).
    base = base_model(model)
    if not getattr(base, "_require_grads_hooks", None):
        base.enable_input_require_grads()
    for layer in layers:
        # P-Tuning v2: inside trainer.prefix's PrefixByLayer, which hands the layer its prefix
        holder = layer.forward if isinstance(layer.forward, PrefixByLayer) else layer
        if not isinstance(holder.forward, CompiledForward):
            holder.forward = CompiledForward(layer)
    logger.info("compiling %d decoder layers with torch.compile (dynamic shapes)", len(layers))
    return len(layers)


class _WhileTraining:
    """``compiled`` while grad is on (training), ``eager`` otherwise (evaluation, generation)."""

    def __init__(self, eager: Any, compiled: Any) -> None:
        self.eager, self.compiled = eager, compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return (self.compiled if torch.is_grad_enabled() else self.eager)(*args, **kwargs)


def _swiglu(up_states: torch.Tensor) -> torch.Tensor:
    """GLM-4's MLP between its two projections: the SiLU-gated half of ``gate_up_proj``'s output."""
    gate, up = up_states.chunk(2, dim=-1)
    return up * torch.nn.functional.silu(gate)


_compiled_swiglu = torch.compile(_swiglu, dynamic=True)


def _mlp_forward(mlp: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    """``GlmMLP.forward`` with its activation compiled; the projections stay module calls (where
    ZeRO-3 gathers their weights)."""
    up_states = mlp.gate_up_proj(hidden_states)
    gated = (_compiled_swiglu if torch.is_grad_enabled() else _swiglu)(up_states)
    return mlp.down_proj(gated)


def compile_layer_functions(model: Any) -> int:
    """Compile the elementwise functions of ``model``'s decoder layers, leaving every module
    that owns a matrix to run eagerly: each RMSNorm's forward (its small weight is not
    partitioned), the SwiGLU gate of each MLP (SiLU only: GLM-4's), and the modeling module's
    ``apply_rotary_pos_emb``. Returns how many layers."""
    layers = decoder_layers(model)
    norms = [m for m in base_model(model).modules() if type(m).__name__.endswith("RMSNorm")]
    for norm in norms:
        if not isinstance(norm.forward, _WhileTraining):
            eager = types.MethodType(type(norm).forward, norm)
            norm.forward = _WhileTraining(eager, torch.compile(eager, dynamic=True))
    for layer in layers:
        mlp: Any = getattr(layer, "mlp", None)
        act = getattr(mlp, "activation_fn", None)
        if type(act).__name__ in ("SiLU", "SiLUActivation"):
            mlp.forward = types.MethodType(_mlp_forward, mlp)
    modeling = sys.modules[type(layers[0]).__module__]
    rope = getattr(modeling, "apply_rotary_pos_emb", None)
    if rope is not None and not isinstance(rope, _WhileTraining):
        compiled_rope = _WhileTraining(rope, torch.compile(rope, dynamic=True))
        setattr(modeling, "apply_rotary_pos_emb", compiled_rope)  # noqa: B010 - a module global
    logger.info(
        "compiling the RMSNorm, SwiGLU and RoPE functions of %d decoder layers (ZeRO-3)",
        len(layers),
    )
    return len(layers)


def compile_stats() -> dict[str, Any]:
    """What dynamo compiled in this process: ``frames`` (each recompile is one more),
    ``graphs``, ``graph_breaks``, and ``seconds`` spent compiling (forward and backward)."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    seconds = sum(
        sum(times)
        for key, times in compilation_time_metrics.items()
        if key in ("_compile.compile_inner", "compile_fx.<locals>.bw_compiler")
    )
    return {
        "frames": counters["frames"]["ok"],
        "graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
        "seconds": round(seconds, 1),
    }
