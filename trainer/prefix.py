"""P-Tuning v2's prefix, served to each decoder layer as that layer's own slice of the KV cache.

PEFT passes the trained prefix as a KV cache. Each attention calls ``cache.update(keys, values,
layer_idx)``, which appends the new keys and values to the cache *in place* and returns them
behind the prefix. Two things break on that:

- gradient checkpointing recomputes each layer in the backward pass and would append a second
  time, so transformers drops the cache (``past_key_values=None``) from checkpointed layers:
  the prefix is silently gone, and the attention mask no longer matches the keys;
- ``torch.compile`` specialises on ``layer_idx`` and builds one graph per layer.

In training, each layer is given a :class:`LayerPrefix` instead: that layer's prefix, returned
behind the new keys and values, never grown (a training forward never reads the cache back).
Recomputing it is harmless, so checkpointed layers keep it, and it carries no layer index.
Evaluation and generation get the real cache.
"""

from __future__ import annotations

from typing import Any

import torch


class LayerPrefix:
    """One layer's P-Tuning v2 prefix in place of the whole KV cache, in training.

    ``update`` returns the prefix followed by the new keys and values, as the cache does, but
    does not grow (a training forward never reads the cache back), so a checkpointed layer may
    run it again; and it ignores the layer index the cache is indexed by, so compiled layers
    share one graph.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    @classmethod
    def of(cls, cache: Any, layer: torch.nn.Module) -> LayerPrefix | None:
        index = getattr(getattr(layer, "self_attn", None), "layer_idx", None)
        layers = getattr(cache, "layers", None)
        if index is None or not isinstance(layers, list) or index >= len(layers):
            return None
        keys, values = getattr(layers[index], "keys", None), getattr(layers[index], "values", None)
        if not (isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor)):
            return None
        return cls(keys, values)

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, *_layer_idx: Any, **_options: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.keys, keys], dim=-2), torch.cat([self.values, values], dim=-2)


class PrefixByLayer:
    """A decoder layer's ``forward`` that hands it :class:`LayerPrefix` in training."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.layer = layer
        self.forward = layer.forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        cache = kwargs.get("past_key_values")
        if cache is not None and self.layer.training and torch.is_grad_enabled():
            prefix = LayerPrefix.of(cache, self.layer)
            if prefix is not None:
                kwargs = {**kwargs, "past_key_values": prefix}
        return self.forward(*args, **kwargs)


def serve_prefix_by_layer(layers: torch.nn.ModuleList) -> None:
    """Route a P-Tuning v2 model's prefix through :class:`LayerPrefix` in each decoder layer,
    and let checkpointed layers keep it (its update is safe to recompute)."""
    for layer in layers:
        if not isinstance(layer.forward, PrefixByLayer):
            layer.forward = PrefixByLayer(layer)
            layer._can_checkpoint_with_cache = True
