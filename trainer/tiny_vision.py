"""Build a tiny, random GLM-4 vision model offline: the layout of GLM-4.1V-9B, scaled down.

The model is transformers' native ``Glm4vForConditionalGeneration`` (``model_type: "glm4v"``):
a one-block vision tower and a two-layer GLM-4 language model. The tokenizer is the tiny GLM-4
tokenizer (:mod:`trainer.tiny`) plus GLM-4.1V's ``<|image|>`` and ``<|video|>`` placeholders,
and its chat template is GLM-4's with GLM-4.1V's rendering of content parts (an image part
becomes ``<|begin_of_image|><|image|><|end_of_image|>``). The image processor is GLM-4.1V's
(Pillow backend) with small pixel bounds, so an image costs 4 to 16 placeholder tokens.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken
from transformers import Glm4vConfig, Glm4vForConditionalGeneration
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

from trainer.tiny import (
    MAX_POSITION_EMBEDDINGS,
    STOP_TOKENS,
    _no_progress_bars,
    _round_up,
    build_tokenizer,
    chat_generation_config,
    load_chat_template,
    token_id,
)

logger = logging.getLogger(__name__)

VISION_TOKENS: tuple[str, ...] = ("<|image|>", "<|video|>")
_CONTENT = "{{ item['content'] }}"
_PARTS = (
    "{% if item['content'] is string %}{{ item['content'] }}{% else %}"
    "{% for part in item['content'] %}{% if part['type'] == 'image' %}"
    "<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
)
#: Pixel bounds of the tiny image processor: 56x56 to 112x112 after resizing.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112


def vision_chat_template() -> str:
    """GLM-4's template, rendering a list of content parts as GLM-4.1V does."""
    template = load_chat_template()
    if template.count(_CONTENT) != 1:
        raise RuntimeError("the GLM-4 chat template changed: no single content placeholder")
    return template.replace(_CONTENT, _PARTS)


def build_vision_tokenizer(*, vocab_size: int = 2000) -> Any:
    tokenizer = build_tokenizer(vocab_size=vocab_size)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS])
    tokenizer.chat_template = vision_chat_template()
    return tokenizer


def build_vision_config(tokenizer: Any, *, hidden_size: int = 64, layers: int = 2) -> Glm4vConfig:
    """A GLM-4.1V-shaped ``Glm4vConfig`` scaled down to ``hidden_size`` and ``layers``."""
    if hidden_size <= 0 or hidden_size % 16:
        raise ValueError(f"hidden_size must be a positive multiple of 16, got {hidden_size}")
    ids = {t: token_id(tokenizer, t) for t in (*VISION_TOKENS, "<|begin_of_image|>")}
    head_dim = hidden_size // 4
    rotary_pairs = head_dim // 4  # partial rotary 0.5 of the head, in (cos, sin) pairs
    return Glm4vConfig(
        text_config={
            "vocab_size": _round_up(len(tokenizer), 64),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e4,
                "partial_rotary_factor": 0.5,
                # temporal, height, width shares of the rotary pairs (GLM-4.1V: 8, 12, 12)
                "mrope_section": [rotary_pairs - 2 * (rotary_pairs // 3), *[rotary_pairs // 3] * 2],
            },
            "pad_token_id": token_id(tokenizer, "<|endoftext|>"),
            "eos_token_id": [token_id(tokenizer, t) for t in STOP_TOKENS],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "num_heads": 2,
            "intermediate_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "image_size": 112,
            "out_hidden_size": hidden_size,
        },
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=token_id(tokenizer, "<|end_of_image|>"),
        video_start_token_id=token_id(tokenizer, "<|begin_of_video|>"),
        video_end_token_id=token_id(tokenizer, "<|end_of_video|>"),
        tie_word_embeddings=False,
    )


def build_image_processor() -> Glm4vImageProcessorPil:
    return Glm4vImageProcessorPil(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )


# As trainer.tiny: a frozen head with the default init caps every logit margin near 0.
_HEAD_LOGIT_SCALE = 16.0


def build_tiny_vision_model(
    out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0, vocab_size: int = 2000
) -> Path:
    """Write a random tiny ``Glm4vForConditionalGeneration``, its tokenizer and image processor
    to ``out_dir`` and return it. The same arguments always give the same files."""
    out_dir = Path(out_dir)
    tokenizer = build_vision_tokenizer(vocab_size=vocab_size)
    config = build_vision_config(tokenizer, hidden_size=hidden_size, layers=layers)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Glm4vForConditionalGeneration(config).eval()
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, _HEAD_LOGIT_SCALE / hidden_size)
    finally:
        torch.random.set_rng_state(state)
    text = config.text_config
    model.generation_config = chat_generation_config(text.eos_token_id, text.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _no_progress_bars():
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        build_image_processor().save_pretrained(out_dir)
    logger.info(
        "tiny GLM-4V written to %s (%d params, hidden %d, layers %d, seed %d)",
        out_dir,
        sum(p.numel() for p in model.parameters()),
        hidden_size,
        layers,
        seed,
    )
    return out_dir
