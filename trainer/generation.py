"""Eval-with-generation through the serving engine (:mod:`serving.engine`): the whole eval set
at once, continuously batched, instead of transformers' ``generate`` one eval batch at a time,
padded to its longest answer.

The engine runs over the model being trained, as it is: a LoRA or P-Tuning v2 adapter is saved
to a scratch directory and loaded into the engine's pool as an adapter it serves, so the
answers are those the saved checkpoint gives in chat. The model's modules are left untouched
(the engine keeps its own fused copy of the attention projections while it runs).

Used for one process that holds the whole model; several ranks or ZeRO-3's partitioned weights
keep transformers' path. ``serving`` is imported here, lazily: it needs this package's model
loading, and nothing else of the trainer needs it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

MAX_ROWS = 256
CACHE_SHARE = 0.5  # of the free GPU memory the eval's key/value cache may take


def engine_unusable(model: Any, *, world_size: int, deepspeed: bool) -> str | None:
    """Why the engine cannot generate for ``model`` here, or None when it can."""
    if world_size > 1:
        return "several ranks"
    if deepspeed:
        return "DeepSpeed partitions or wraps the weights"
    base = _base_model(model)
    if getattr(base.config, "model_type", None) not in ("glm", "glm4"):
        return f"model type {getattr(base.config, 'model_type', None)!r}"
    return None


def generate_all(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    repetition_penalty: float = 1.0,
) -> list[list[int]]:
    """Greedy answer token ids (end token excluded) of every prompt, in order."""
    from serving.adapters import AdapterSpec
    from serving.engine import Engine
    from serving.params import GenerationParams
    from serving.requests import Request

    base = _base_model(model)
    was_training = model.training
    model.eval()
    with tempfile.TemporaryDirectory(prefix="glmft-eval-") as scratch:
        spec = None
        if base is not model:  # a PEFT model: serve its adapter as the engine would
            model.save_pretrained(scratch)
            spec = AdapterSpec.from_dir("eval", Path(scratch))
        engine = Engine(
            base,
            tokenizer,
            name="eval",
            max_batch=min(MAX_ROWS, max(1, len(prompts))),
            max_adapters=1,
            cache_bytes=_cache_bytes(base, prompts, max_new_tokens),
            max_context=max(len(p) for p in prompts) + max_new_tokens + _prefix_tokens(model),
            fuse_qkv=False,
        )
        params = GenerationParams(
            max_new_tokens=max_new_tokens,
            temperature=0,
            repetition_penalty=repetition_penalty,
        )
        answers: list[list[int]] = [[] for _ in prompts]
        failures: list[str] = []
        left = [len(prompts)]
        done = threading.Event()
        lock = threading.Lock()

        def collect(index: int) -> Any:
            def on_event(event: Any) -> None:
                if event.kind == "delta":
                    return
                with lock:
                    if event.result is not None:
                        answers[index] = list(event.result.token_ids)
                    else:
                        failures.append(event.message)
                    left[0] -= 1
                    if not left[0]:
                        done.set()

            return on_event

        try:
            for index, prompt in enumerate(prompts):
                engine.submit(Request(prompt, params, collect(index), adapter=spec, stream=False))
            done.wait()
        finally:
            engine.close()
            if was_training:
                model.train()
    if failures:
        raise RuntimeError(f"eval generation failed for {len(failures)} prompts: {failures[0]}")
    return answers


def _base_model(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _prefix_tokens(model: Any) -> int:
    config = getattr(model, "peft_config", {}).get("default")
    return int(getattr(config, "num_virtual_tokens", 0) or 0)


def _cache_bytes(model: Any, prompts: list[list[int]], max_new_tokens: int) -> int:
    """Room for every row at once, or a share of the free GPU memory when that is less."""
    from serving.model import Glm

    parameter = next(model.parameters())
    shape = Glm.cache_shape(model.config)
    per_token = shape.bytes_per_block(parameter.dtype) // shape.block_size
    longest = max(len(p) for p in prompts) + max_new_tokens + _prefix_tokens(model)
    rows = min(MAX_ROWS, len(prompts))
    needed = (rows * (longest + shape.block_size) + shape.block_size * 2) * per_token
    if parameter.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(parameter.device)
        needed = min(needed, int(free * CACHE_SHARE))
    return needed


def generated_eval(trainer: Any, dataset: Any, tokenizer: Any, prefix: str) -> Any:
    """What transformers' ``evaluation_loop`` returns for a generation eval of ``dataset``
    (features with ``input_ids`` and ``output_ids``), the answers from :func:`generate_all`."""
    from transformers.trainer_utils import EvalLoopOutput, EvalPrediction

    generation = trainer.model.generation_config
    max_new_tokens = trainer._gen_kwargs.get("max_new_tokens") or generation.max_new_tokens
    features = dataset.features
    answers = generate_all(
        trainer.model,
        tokenizer,
        [f["input_ids"] for f in features],
        max_new_tokens=int(max_new_tokens),
        repetition_penalty=float(generation.repetition_penalty or 1.0),
    )
    pad = int(tokenizer.pad_token_id or 0)
    predictions, labels = _padded(answers, pad), _padded([f["output_ids"] for f in features], pad)
    metrics = trainer.compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
    metrics = {f"{prefix}_{key}": value for key, value in metrics.items()}
    logger.info("%s: %d answers generated by the serving engine", prefix, len(answers))
    return EvalLoopOutput(
        predictions=predictions, label_ids=labels, metrics=metrics, num_samples=len(features)
    )


def _padded(rows: list[list[int]], pad: int) -> Any:
    import numpy as np

    width = max((len(r) for r in rows), default=0)
    return np.array([r + [pad] * (width - len(r)) for r in rows], dtype=np.int64)
