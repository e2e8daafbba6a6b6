"""Token statistics of a dataset under a config: lengths and how many would be truncated."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config import FinetuningConfig, load_config
from trainer.template import Message, SpecialTokens, encode_train

# The upstream yaml defaults, used when no config is given.
DEFAULT_LENGTHS = {"max_input_length": 512, "max_output_length": 512, "combine": True}
#: Bins of the token length histogram (the dashboard draws it).
HISTOGRAM_BINS = 20


def encoding_options(config_path: Path | str | None) -> dict[str, Any]:
    if config_path is None:
        return dict(DEFAULT_LENGTHS)
    config: FinetuningConfig = load_config(config_path)
    return {
        "max_input_length": config.max_input_length,
        "max_output_length": config.max_output_length,
        "combine": config.combine,
    }


def compute_token_stats(
    records: list[tuple[int, list[Message]]],
    *,
    model_dir: Path | str,
    config_path: Path | str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """``records`` are ``(line, messages)`` of valid conversations; ``on_progress(done, total)``
    is called every 1,000 of them."""
    from trainer.modeling import load_tokenizer

    options = encoding_options(config_path)
    max_length = options["max_input_length"] + options["max_output_length"] + 1
    tokenizer = load_tokenizer(Path(model_dir))
    special = SpecialTokens.from_tokenizer(tokenizer)
    lengths: list[int] = []
    targets: list[int] = []
    truncated_lines: list[int] = []
    no_target_lines: list[int] = []
    for done, (line, messages) in enumerate(records, start=1):
        if on_progress is not None and done % 1000 == 0:
            on_progress(done, len(records))
        example = encode_train(
            tokenizer, special, messages, combine=options["combine"], max_length=max_length
        )
        lengths.append(example.full_length)
        targets.append(sum(1 for label in example.labels if label >= 0))
        if targets[-1] == 0:
            no_target_lines.append(line)
        if example.truncated:
            truncated_lines.append(line)
    return {
        **options,
        "max_length": max_length,
        "tokens": _summary(lengths),
        "histogram": length_histogram(lengths),
        "target_tokens": _summary(targets),
        "truncated": len(truncated_lines),
        "truncated_lines": truncated_lines[:100],
        # conversations that train nothing once truncated (a batch of only these has NaN loss)
        "no_target": len(no_target_lines),
        "no_target_lines": no_target_lines[:100],
    }


def length_histogram(values: list[int], bins: int = HISTOGRAM_BINS) -> dict[str, list[int]]:
    """Equal-width bins over ``values``: ``counts[i]`` values lie in ``[edges[i], edges[i+1])``.

    The width is a whole number of tokens, so there are at most ``bins`` bins (fewer when the
    lengths span less than ``bins`` tokens).
    """
    if not values:
        return {"edges": [], "counts": []}
    low, high = min(values), max(values)
    width = max(1, math.ceil((high - low + 1) / bins))
    counts = [0] * ((high - low) // width + 1)
    for value in values:
        counts[(value - low) // width] += 1
    return {"edges": [low + i * width for i in range(len(counts) + 1)], "counts": counts}


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {
        "count": len(values),
        "total": sum(values),
        "min": ordered[0],
        "max": ordered[-1],
        "mean": round(statistics.fmean(values), 2),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
    }
