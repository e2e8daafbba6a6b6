"""Vision training data: GLM-4V conversations (``image`` on the first message) as token ids,
loss masks and image tensors for ``Glm4vForConditionalGeneration``.

A conversation is rendered by the tokenizer's chat template exactly as a text one
(:mod:`trainer.template`: the same loss masks, ``combine`` modes and eval prompts), with its
first message turned into GLM-4.1V's content parts (an image part, then the text), which the
template renders as ``<|begin_of_image|><|image|><|end_of_image|>``. The one ``<|image|>`` is
then repeated once per merged image patch, a count the image processor computes from the
image's header, so the pixels are decoded only when a batch is built (:class:`VisionDataset`,
in the data loader's workers). Targets never cover image tokens: they are in the user turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoImageProcessor

from trainer.config import ConfigError, FinetuningConfig
from trainer.data import DataError, LeftPadCollator, load_conversations
from trainer.images import ImageError, image_size, open_rgb, resolve_image
from trainer.modeling import UnsupportedModelError
from trainer.template import (
    ChatTokenizer,
    Message,
    SpecialTokens,
    encode_eval,
    encode_train,
)
from trainer.vision import (
    IMAGE_TOKEN,
    is_remote_code_vision,
    is_vision_config,
    vision_config_issues,
)

_NO_TRUNCATION = 1 << 62


def check_vision_run(model_config: dict[str, Any], config: FinetuningConfig) -> bool:
    """Whether the run trains a vision model; raises what such a run cannot do."""
    if is_remote_code_vision(model_config):
        raise UnsupportedModelError(
            "GLM-4V-9B's remote code builds its image inputs inside its own tokenizer, which "
            "glmft does not drive; train the native GLM-4.1V-9B (Glm4vForConditionalGeneration)"
        )
    if not is_vision_config(model_config):
        return False
    issues = vision_config_issues(config)
    if issues:
        raise ConfigError(issues)
    return True


def native_messages(messages: list[Message]) -> tuple[list[Message], str | None]:
    """The conversation with its first message's ``image`` turned into content parts, and the
    image as given (None without one)."""
    if not messages or "image" not in messages[0]:
        return messages, None
    first = dict(messages[0])
    image = first.pop("image")
    first["content"] = [{"type": "image"}, {"type": "text", "text": first.get("content") or ""}]
    return [first, *messages[1:]], image


@dataclass(frozen=True)
class ImageTokens:
    """How images become tokens: the processor and the placeholder's id."""

    processor: Any
    image_token: int

    @classmethod
    def load(cls, model_dir: Path, tokenizer: ChatTokenizer) -> ImageTokens:
        processor = AutoImageProcessor.from_pretrained(model_dir)
        token = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if not isinstance(token, int) or token == getattr(tokenizer, "unk_token_id", None):
            raise DataError(f"the tokenizer of {model_dir} has no {IMAGE_TOKEN} token")
        return cls(processor, token)

    @property
    def merge(self) -> int:
        return int(self.processor.merge_size) ** 2

    def count(self, path: Path) -> int:
        """Placeholder tokens of the image at ``path`` (from its header only)."""
        width, height = image_size(path)
        patches = self.processor.get_number_of_image_patches(height, width, {})
        return int(patches) // self.merge

    def pixels(self, image: Any) -> dict[str, torch.Tensor]:
        """``pixel_values`` (patches x features) and ``image_grid_thw`` (1 x 3) of one image."""
        out = self.processor(images=[image], return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def expand(self, ids: list[int], labels: list[int] | None, count: int) -> tuple[Any, Any]:
        """``ids`` (and ``labels``) with the one placeholder repeated ``count`` times."""
        at = ids.index(self.image_token)
        ids = [*ids[:at], *[self.image_token] * count, *ids[at + 1 :]]
        if labels is not None:
            labels = [*labels[:at], *[labels[at]] * count, *labels[at + 1 :]]
        return ids, labels


def _image_path(image: str, data_file: Path) -> Path:
    return resolve_image(image, data_file.parent, confined=False)


def _check_kept(ids: list[int], kept: int, tokens: ImageTokens, where: str) -> None:
    if tokens.image_token in ids[kept:]:
        raise DataError(
            f"{where}: the image's {ids.count(tokens.image_token)} tokens do not fit "
            f"{kept} tokens; raise max_input_length or use smaller images"
        )


def vision_train_features(
    tokenizer: ChatTokenizer,
    special: SpecialTokens,
    tokens: ImageTokens,
    data_file: Path,
    *,
    combine: bool,
    max_length: int,
) -> list[dict[str, Any]]:
    """Training rows of ``data_file``: ``input_ids``, ``labels`` and the ``image`` path."""
    features = []
    for line, messages in _conversations(data_file):
        native, image = native_messages(messages)
        example = encode_train(
            tokenizer, special, native, combine=combine, max_length=_NO_TRUNCATION
        )
        ids, labels = example.input_ids, example.labels
        path = _image_path(image, data_file) if image is not None else None
        if path is not None:
            ids, labels = tokens.expand(ids, labels, _count(tokens, path, data_file, line))
            _check_kept(ids, max_length, tokens, f"{data_file}:{line}")
        features.append(
            {"input_ids": ids[:max_length], "labels": labels[:max_length], "image": path}
        )
    return features


def vision_eval_features(
    tokenizer: ChatTokenizer,
    special: SpecialTokens,
    tokens: ImageTokens,
    data_file: Path,
    *,
    combine: bool,
    max_input_length: int,
    max_output_length: int,
) -> list[dict[str, Any]]:
    """Eval prompts (context through ``<|assistant|>``) and targets, with the image path."""
    features = []
    for line, messages in _conversations(data_file):
        native, image = native_messages(messages)
        path = _image_path(image, data_file) if image is not None else None
        count = _count(tokens, path, data_file, line) if path is not None else 0
        for example in encode_eval(
            tokenizer,
            special,
            native,
            combine=combine,
            max_input_length=_NO_TRUNCATION,
            max_output_length=max_output_length,
        ):
            prompt = example.prompt_ids
            if path is not None:
                prompt, _ = tokens.expand(prompt, None, count)
            body = prompt[:-1]  # the head-kept context, then <|assistant|>, as the text path
            _check_kept(body, max_input_length, tokens, f"{data_file}:{line}")
            features.append(
                {
                    "input_ids": [*body[:max_input_length], prompt[-1]],
                    "output_ids": example.target_ids,
                    "image": path,
                }
            )
    return features


def _conversations(data_file: Path) -> list[tuple[int, list[Message]]]:
    rows: list[tuple[int, list[Message]]] = []
    load_conversations(data_file, vision=True, on_row=lambda line, msgs: rows.append((line, msgs)))
    return rows


def _count(tokens: ImageTokens, path: Path, data_file: Path, line: int) -> int:
    try:
        return tokens.count(path)
    except ImageError as exc:
        raise DataError(f"{data_file}:{line}: messages[0].image: {exc}") from exc


class VisionDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Rows of token ids whose image is decoded and processed when the row is fetched."""

    def __init__(self, features: list[dict[str, Any]], tokens: ImageTokens) -> None:
        self.features = features
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = dict(self.features[index])
        path = row.pop("image")
        if path is not None:
            row.update(self.tokens.pixels(open_rgb(path, name=path.name)))
        return row


@dataclass(frozen=True)
class VisionCollator:
    """Left-padded token batches (as :class:`trainer.data.LeftPadCollator`), the images of the
    rows that have one concatenated in row order, and ``mm_token_type_ids`` (1 on image
    placeholders), from which the model builds its 3-D (multimodal) RoPE positions."""

    pad_id: int
    image_token: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        token_keys = ("input_ids", "labels", "output_ids")
        batch = LeftPadCollator(self.pad_id)(
            [{k: f[k] for k in token_keys if k in f} for f in features]
        )
        batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_token).int()
        with_image = [f for f in features if "pixel_values" in f]
        if with_image:
            batch["pixel_values"] = torch.cat([f["pixel_values"] for f in with_image])
            batch["image_grid_thw"] = torch.cat([f["image_grid_thw"] for f in with_image])
        return batch


def vision_datasets(
    tokenizer: ChatTokenizer,
    special: SpecialTokens,
    tokens: ImageTokens,
    config: Any,
    files: dict[str, Path],
    *,
    with_eval: bool,
    generate: bool,
) -> tuple[VisionDataset, VisionDataset | None]:
    """Train rows, and eval rows (prompts and targets for generation, else loss rows), as
    :func:`trainer.finetune.build_datasets` builds them for text."""
    train = VisionDataset(
        vision_train_features(
            tokenizer,
            special,
            tokens,
            files["train"],
            combine=config.combine,
            max_length=config.max_length,
        ),
        tokens,
    )
    if not with_eval:
        return train, None
    if generate:
        return train, vision_eval_dataset(tokenizer, special, tokens, config, files["validation"])
    rows = vision_train_features(
        tokenizer,
        special,
        tokens,
        files["validation"],
        combine=config.combine,
        max_length=config.max_length,
    )
    return train, VisionDataset(rows, tokens)


def vision_eval_dataset(
    tokenizer: ChatTokenizer, special: SpecialTokens, tokens: ImageTokens, config: Any, path: Path
) -> VisionDataset:
    """Generation eval rows of ``path`` (validation or test)."""
    rows = vision_eval_features(
        tokenizer,
        special,
        tokens,
        path,
        combine=config.combine,
        max_input_length=config.max_input_length,
        max_output_length=config.max_output_length,
    )
    return VisionDataset(rows, tokens)
