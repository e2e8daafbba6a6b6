"""Training and eval datasets: validated conversations, tokenized, and the left-padding collator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.config import DataConfig
from trainer.images import ImageCheck
from trainer.template import (
    IGNORE_INDEX,
    ChatTokenizer,
    Message,
    SpecialTokens,
    encode_eval,
    encode_train,
)
from trainer.validation import ValidationReport, validate_path

_MAX_REPORTED = 5


class DataError(ValueError):
    """A data file is missing or holds invalid conversations."""

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        self.report = report
        super().__init__(message)


def split_files(data_dir: Path, data_config: DataConfig) -> dict[str, Path]:
    """``{"train"|"validation"|"test": path}`` for the files the config names (relative to
    ``data_dir``, as the upstream demo's ``load_dataset(data_dir, data_files=...)``)."""
    names = {
        "train": data_config.train_file,
        "validation": data_config.val_file,
        "test": data_config.test_file,
    }
    files = {split: data_dir / name for split, name in names.items() if name}
    if "train" not in files:
        raise DataError("data_config.train_file is not set")
    for split, path in files.items():
        if not path.is_file():
            raise DataError(f"{split} file not found: {path}")
    return files


def load_conversations(
    path: Path,
    *,
    vision: bool = False,
    on_row: Callable[[int, list[Message]], None] | None = None,
) -> list[list[Message]]:
    """All conversations of ``path``; raises ``DataError`` listing the errors if any is invalid.

    ``vision`` accepts GLM-4V data and checks each image file (:mod:`trainer.images`);
    ``on_row(line_or_index, messages)`` is called for each conversation as it is read.
    """
    conversations: list[list[Message]] = []

    def keep(messages: list[Message], pos: int) -> None:
        conversations.append(messages)
        if on_row is not None:
            on_row(pos, messages)

    report = validate_path(
        path, vision=vision, on_conversation=keep, images=ImageCheck() if vision else None
    )
    if not report.valid:
        shown = "; ".join(
            f"{e.file}:{e.line if e.line is not None else f'[{e.index}]'}: "
            f"{e.path or '<conversation>'}: {e.message}"
            for e in report.errors[:_MAX_REPORTED]
        )
        more = len(report.errors) - _MAX_REPORTED
        suffix = f" (and {more} more; run `glmft validate {path}`)" if more > 0 else ""
        raise DataError(
            f"{len(report.errors)} invalid conversation(s) in {path}: {shown}{suffix}", report
        )
    return conversations


class FeatureDataset(torch.utils.data.Dataset[dict[str, list[int]]]):
    def __init__(self, features: list[dict[str, list[int]]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.features[index]


def train_dataset(
    tokenizer: ChatTokenizer,
    special: SpecialTokens,
    conversations: list[list[Message]],
    *,
    combine: bool,
    max_length: int,
) -> FeatureDataset:
    features = []
    for messages in conversations:
        example = encode_train(tokenizer, special, messages, combine=combine, max_length=max_length)
        features.append({"input_ids": example.input_ids, "labels": example.labels})
    return FeatureDataset(features)


def eval_dataset(
    tokenizer: ChatTokenizer,
    special: SpecialTokens,
    conversations: list[list[Message]],
    *,
    combine: bool,
    max_input_length: int,
    max_output_length: int,
) -> FeatureDataset:
    features = []
    for messages in conversations:
        for example in encode_eval(
            tokenizer,
            special,
            messages,
            combine=combine,
            max_input_length=max_input_length,
            max_output_length=max_output_length,
        ):
            features.append({"input_ids": example.prompt_ids, "output_ids": example.target_ids})
    return FeatureDataset(features)


@dataclass(frozen=True)
class LeftPadCollator:
    """Left-pads ``input_ids`` (pad token), ``attention_mask`` (0) and ``labels`` (-100), as the
    demo's collator does; eval ``output_ids`` are right-padded with the pad token."""

    pad_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = self._width(max(len(f["input_ids"]) for f in features))
        batch: dict[str, Any] = {
            "input_ids": [
                [self.pad_id] * (width - len(f["input_ids"])) + f["input_ids"] for f in features
            ],
            "attention_mask": [
                [0] * (width - len(f["input_ids"])) + [1] * len(f["input_ids"]) for f in features
            ],
        }
        if "labels" in features[0]:
            batch["labels"] = [
                [IGNORE_INDEX] * (width - len(f["labels"])) + f["labels"] for f in features
            ]
        if "output_ids" in features[0]:
            out_width = self._width(max(len(f["output_ids"]) for f in features))
            batch["output_ids"] = [
                f["output_ids"] + [self.pad_id] * (out_width - len(f["output_ids"]))
                for f in features
            ]
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}

    def _width(self, longest: int) -> int:
        multiple = self.pad_to_multiple_of
        if not multiple:
            return longest
        return -(-longest // multiple) * multiple


@dataclass(frozen=True)
class PackingCollator:
    """Padding-free training batches: the batch's conversations concatenated into one row with
    ``position_ids`` restarting at 0 for each, and no attention mask, from which transformers
    builds a causal mask that stays inside each conversation (``find_packed_sequence_indices``;
    only without a KV cache, as training runs: ``use_cache=False``); on a GPU the boundaries
    also go to :mod:`trainer.attention`'s variable-length kernel, which needs no mask.

    Labels need no separator: a conversation's first label is always -100 (the shift of
    :func:`trainer.template.encode_train`), so no token learns to predict the next
    conversation. Eval batches (``output_ids``, generation) are left-padded as usual.
    """

    pad_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        if "labels" not in features[0] or "output_ids" in features[0]:
            return LeftPadCollator(self.pad_id)(features)
        lengths = [len(f["input_ids"]) for f in features]
        bounds = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return {
            "input_ids": torch.tensor([[t for f in features for t in f["input_ids"]]]),
            "labels": torch.tensor([[t for f in features for t in f["labels"]]]),
            "position_ids": torch.tensor([[i for n in lengths for i in range(n)]]),
            # conversation boundaries for trainer.attention's variable-length kernel (GPU)
            "cu_seq_lens_q": bounds,
            "cu_seq_lens_k": bounds,
            "max_length_q": max(lengths),
            "max_length_k": max(lengths),
        }
