"""Fine-tune GLM-4 with LoRA, P-Tuning v2 or full SFT: the upstream demo's command line.

    python -m trainer.finetune DATA_DIR MODEL_DIR CONFIG [yes|N|no] [--output-dir DIR]
    torchrun --standalone --nproc_per_node=K -m trainer.finetune DATA_DIR MODEL_DIR CONFIG

``yes`` (``--resume latest``) resumes from the newest complete checkpoint (or starts fresh when
there is none), ``N`` (``--resume step:N``) from ``checkpoint-N`` (an error when it is missing or
incomplete), ``no`` (``--resume none``) or nothing trains from scratch. The arguments are
``trainer.contract.command.TrainerArgs``, which the worker renders. Progress goes to
``events.jsonl`` in the output directory. ``--lock FILE --attempt N`` (the worker's way) holds FILE
so that no other trainer runs in the directory meanwhile (``trainer.fence``). Exit codes: 0
succeeded, 2 the input was at fault (config, data, checkpoint, model directory), 3 refused by the
lock (another or a newer attempt owns the directory; nothing was written), 1 anything else.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import GenerationConfig, Seq2SeqTrainer, set_seed

from trainer import __version__
from trainer.attention import register_packed_attention
from trainer.callbacks import CompileReport, EventCallback, TrainingDivergedError, strip_prefix
from trainer.checkpoints import CheckpointNotFoundError, resolve_resume
from trainer.compile import compile_model
from trainer.config import (
    ConfigError,
    FinetuningConfig,
    load_config,
)
from trainer.contract.command import TrainerArgs
from trainer.contract.events import EvalEvent, EventLog, StartedEvent, StatusEvent
from trainer.contract.layout import OUTPUT_DIR
from trainer.data import (
    DataError,
    FeatureDataset,
    LeftPadCollator,
    PackingCollator,
    eval_dataset,
    load_conversations,
    split_files,
)
from trainer.data import train_dataset as build_train_dataset
from trainer.datacache import cache_key, cached_features
from trainer.datafiles import data_sha256
from trainer.distributed import (
    DistInfo,
    close_process_group,
    configure_logging,
    exit_process,
)
from trainer.fence import FenceError
from trainer.fence import acquire as acquire_fence
from trainer.generation import engine_unusable, generated_eval
from trainer.loss import chunked_causal_lm_loss
from trainer.memory import CHUNK_TOKENS, plan_for_config
from trainer.metrics import score_texts
from trainer.modeling import (
    UnsupportedModelError,
    attach_method,
    check_model_dir,
    compute_dtype,
    configure_cuda_kernels,
    keep_embeddings_on_host,
    load_model,
    load_tokenizer,
    parameter_counts,
)
from trainer.template import IGNORE_INDEX, SpecialTokens
from trainer.training_args import build_training_args
from trainer.vision_data import (
    ImageTokens,
    VisionCollator,
    VisionDataset,
    check_vision_run,
    vision_datasets,
    vision_eval_dataset,
)

logger = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_FENCED = 3
# Exceptions that are the user's input at fault, with their stable error codes.
_INPUT_ERRORS: dict[type[Exception], str] = {
    ConfigError: "invalid_config",
    DataError: "invalid_data",
    CheckpointNotFoundError: "checkpoint_not_found",
    UnsupportedModelError: "unsupported_model",
}
# Failures that are not the user's input but have their own code.
_RUN_ERRORS: dict[type[Exception], str] = {
    TrainingDivergedError: "training_diverged",
    torch.OutOfMemoryError: "out_of_memory",
}


class GlmSeq2SeqTrainer(Seq2SeqTrainer):
    """Generation eval that strips the prompt and scores against ``output_ids``; with
    ``chunked_loss`` the training loss never materialises the full logits
    (:func:`trainer.loss.chunked_causal_lm_loss`)."""

    def __init__(
        self,
        *args: Any,
        chunked_loss: bool = False,
        loss_chunk_tokens: int = CHUNK_TOKENS,
        eval_tokenizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.chunked_loss = chunked_loss
        self.loss_chunk_tokens = loss_chunk_tokens
        self.eval_tokenizer = eval_tokenizer  # set: generate eval answers with the engine

    def evaluation_loop(self, dataloader: Any, *args: Any, **kwargs: Any) -> Any:
        """With generation, every eval prompt through the serving engine at once
        (:mod:`trainer.generation`) where it can run; else transformers' loop."""
        dataset = dataloader.dataset
        reason = engine_unusable(
            self.model, world_size=self.args.world_size, deepspeed=self.is_deepspeed_enabled
        )
        if (
            self.eval_tokenizer is None
            or not self.args.predict_with_generate
            or self.compute_metrics is None
            or not isinstance(dataset, FeatureDataset)
            or reason is not None
        ):
            return super().evaluation_loop(dataloader, *args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[3] if len(args) > 3 else "eval")
        return generated_eval(self, dataset, self.eval_tokenizer, prefix)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        if not (self.chunked_loss and model.training and not return_outputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = chunked_causal_lm_loss(model, inputs, num_items_in_batch, self.loss_chunk_tokens)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as transformers scales its own loss
        return loss

    def prediction_step(
        self,
        model: Any,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ) -> Any:
        if not self.args.predict_with_generate:  # eval loss on (input_ids, labels)
            return super().prediction_step(
                model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs
            )
        output_ids = inputs.pop("output_ids", None)
        inputs.pop("labels", None)  # upstream #722: pop with a default, never del
        loss, generated, _ = super().prediction_step(
            model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs
        )
        if generated is not None:
            generated = generated[:, inputs["input_ids"].size(1) :]
        return loss, generated, output_ids


def parse_args(argv: Sequence[str] | None) -> TrainerArgs:
    return TrainerArgs.parse(sys.argv[1:] if argv is None else argv, description=__doc__)


def make_compute_metrics(tokenizer: Any) -> Any:
    def compute_metrics(eval_preds: Any) -> dict[str, float]:
        preds, labels = eval_preds
        pad = tokenizer.pad_token_id
        preds = [[t for t in row if t not in (IGNORE_INDEX, pad)] for row in preds.tolist()]
        labels = [[t for t in row if t not in (IGNORE_INDEX, pad)] for row in labels.tolist()]
        predictions = tokenizer.batch_decode(preds, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return score_texts(predictions, references)

    return compute_metrics


def build_datasets(
    tokenizer: Any,
    special: SpecialTokens,
    config: FinetuningConfig,
    files: dict[str, Path],
    *,
    with_eval: bool,
    generate: bool,
    cache: tuple[Path, Path] | None = None,
) -> tuple[FeatureDataset, FeatureDataset | None]:
    """Train features, and eval features: prompts/targets for generation, else loss features.

    ``cache`` is ``(feature cache dir, tokenizer dir)``: the train features are then read from,
    or stored in, the pre-tokenised cache (:mod:`trainer.datacache`).
    """
    lengths = {
        "max_input_length": config.max_input_length,
        "max_output_length": config.max_output_length,
    }

    def tokenize_train() -> list[dict[str, list[int]]]:
        return build_train_dataset(
            tokenizer,
            special,
            load_conversations(files["train"]),
            combine=config.combine,
            max_length=config.max_length,
        ).features

    if cache is None:
        train = FeatureDataset(tokenize_train())
    else:
        cache_dir, tokenizer_dir = cache
        key = cache_key(
            files["train"], tokenizer_dir, combine=config.combine, max_length=config.max_length
        )
        features, hit = cached_features(cache_dir, key, tokenize_train)
        logger.info("train features %s the cache (%s)", "from" if hit else "added to", key)
        train = FeatureDataset(features)
    if not with_eval:
        return train, None
    val_conversations = load_conversations(files["validation"])
    if generate:
        return train, eval_dataset(
            tokenizer, special, val_conversations, combine=config.combine, **lengths
        )
    return train, build_train_dataset(
        tokenizer, special, val_conversations, combine=config.combine, max_length=config.max_length
    )


def checkpoint_metadata(
    run_args: TrainerArgs, config: FinetuningConfig, files: dict[str, Path]
) -> dict[str, Any]:
    """What every checkpoint records so a server can resolve its base and reproduce it."""
    return {
        "base_model": run_args.base_model_name or run_args.model_dir.resolve().name,
        "method": config.method,
        "config": config.model_dump(mode="json"),
        "data_sha256": data_sha256(list(files.values())),
        "glmft_version": __version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }


def run(
    run_args: TrainerArgs, config: FinetuningConfig, output_dir: Path, events: EventLog
) -> None:
    trust = run_args.trust_remote_code
    model_config = check_model_dir(run_args.model_dir, trust_remote_code=trust)
    vision = check_vision_run(model_config, config)
    configure_cuda_kernels()
    files = split_files(run_args.data_dir, config.data_config)
    tokenizer = load_tokenizer(run_args.model_dir, trust_remote_code=trust)
    special = SpecialTokens.from_tokenizer(tokenizer)
    has_eval = "validation" in files and config.training_args.get("eval_strategy", "no") != "no"
    generation = GenerationConfig(
        **config.generation_config,
        pad_token_id=special.endoftext,
        eos_token_id=special.eos_ids,
        do_sample=False,
    )
    generate = bool(config.training_args.get("predict_with_generate", False))
    tokens = ImageTokens.load(run_args.model_dir, tokenizer) if vision else None
    train_data: FeatureDataset | VisionDataset
    val_data: FeatureDataset | VisionDataset | None
    if tokens is not None:
        train_data, val_data = vision_datasets(
            tokenizer, special, tokens, config, files, with_eval=has_eval, generate=generate
        )
    else:
        train_data, val_data = build_datasets(
            tokenizer,
            special,
            config,
            files,
            with_eval=has_eval,
            generate=generate,
            cache=(run_args.feature_cache, run_args.model_dir) if run_args.feature_cache else None,
        )
    memory = plan_for_config(
        config,
        model_config.get("text_config", model_config) if vision else model_config,
        [len(f["input_ids"]) for f in train_data.features],
        config_path=run_args.config_path,
        dtype_bytes=compute_dtype().itemsize,
        world_size=DistInfo.from_env().world_size,
    )
    args = build_training_args(
        config,
        run_args,
        output_dir,
        has_eval,
        generation,
        gradient_checkpointing=memory.gradient_checkpointing,
        checkpoint_every=memory.checkpoint_every,
        micro_batches=memory.micro_batches,
    )
    if memory.over_budget:
        logger.warning(
            "estimated peak %.1f GiB of the largest batch is over memory_budget_gib even with "
            "every memory measure; lower per_device_train_batch_size or the lengths",
            memory.estimate / 2**30,
        )
    resume_from = resolve_resume(run_args.resume, output_dir)
    set_seed(args.seed)  # before the adapter's random init: a run repeats with its seed
    prefix = config.method == "ptuning_v2"
    attention = register_packed_attention(prefix=prefix) if config.packing else None
    model = load_model(
        run_args.model_dir,
        dtype=compute_dtype(),
        attn_implementation=attention,
        trust_remote_code=trust,
    )
    if memory.host_embeddings:
        keep_embeddings_on_host(model)
    model = attach_method(model, config, gradient_checkpointing=memory.gradient_checkpointing)
    compiled = compile_model(model, args) if config.compile else 0
    trainer = GlmSeq2SeqTrainer(
        chunked_loss=config.chunked_loss,
        loss_chunk_tokens=memory.loss_chunk_tokens,
        model=model,
        args=args,
        data_collator=(
            VisionCollator(special.endoftext, tokens.image_token)
            if tokens is not None
            else PackingCollator(special.endoftext)
            if config.packing
            else LeftPadCollator(pad_id=special.endoftext)
        ),
        train_dataset=train_data,
        eval_dataset=val_data,
        processing_class=tokenizer if config.method == "sft" else None,
        compute_metrics=make_compute_metrics(tokenizer) if generate else None,
        eval_tokenizer=tokenizer if generate and config.eval_engine else None,
        callbacks=[EventCallback(events, checkpoint_metadata(run_args, config, files))]
        + ([CompileReport(events, compiled)] if compiled else []),
    )
    trainable, total = parameter_counts(model)
    events.emit(
        StartedEvent(
            method=config.method,
            world_size=args.world_size,
            max_steps=args.max_steps,
            resume_from=str(resume_from) if resume_from else None,
            trainable_params=trainable,
            total_params=total,
            device=str(args.device),
            train_conversations=len(train_data),
            memory=memory.as_event(),
            attention=attention or model.config._attn_implementation,
            compiled_layers=compiled,
        )
    )
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if "test" in files and generate:
        test_data: FeatureDataset | VisionDataset = (
            vision_eval_dataset(tokenizer, special, tokens, config, files["test"])
            if tokens is not None
            else eval_dataset(
                tokenizer,
                special,
                load_conversations(files["test"]),
                combine=config.combine,
                max_input_length=config.max_input_length,
                max_output_length=config.max_output_length,
            )
        )
        result = trainer.predict(test_data, metric_key_prefix="test")
        events.emit(
            EvalEvent(
                step=trainer.state.global_step,
                split="test",
                metrics=strip_prefix(result.metrics or {}, "test_"),
            )
        )


def main(argv: Sequence[str] | None = None) -> int:
    return execute(parse_args(argv))


def execute(run_args: TrainerArgs) -> int:
    """Train as ``run_args`` say; the exit code (0 ok, 2 the input is at fault, 1 otherwise)."""
    dist = DistInfo.from_env()
    configure_logging(dist)
    if run_args.lock is not None and dist.is_main:  # the other ranks follow rank 0's fate
        try:
            fence = acquire_fence(run_args.lock, run_args.attempt, wait_s=run_args.lock_wait_s)
        except FenceError as exc:  # write nothing: the directory belongs to another trainer
            logger.error("%s: %s", exc.code, exc)
            return EXIT_FENCED
        logger.info("attempt %d holds %s (pid %d)", fence.attempt, fence.path, os.getpid())
    # With --output-dir (the worker's way) even a config that fails to load is reported in events.
    events = EventLog(
        run_args.output_dir or Path(OUTPUT_DIR),
        enabled=dist.is_main and run_args.output_dir is not None,
    )
    try:
        config = load_config(run_args.config_path)
        output_dir = run_args.output_dir or Path(config.training_args.get("output_dir", OUTPUT_DIR))
        events = EventLog(output_dir, enabled=dist.is_main)
        run(run_args, config, output_dir, events)
        close_process_group()
    except tuple(_INPUT_ERRORS) as exc:
        code = next(c for t, c in _INPUT_ERRORS.items() if isinstance(exc, t))
        logger.error("%s: %s", code, exc)
        events.emit(_failed(code, str(exc), user_error=True))
        return EXIT_BAD_INPUT
    except OSError as exc:
        logger.error("cannot read input: %s", exc)
        events.emit(_failed("io_error", str(exc), user_error=True))
        return EXIT_BAD_INPUT
    except tuple(_RUN_ERRORS) as exc:
        code = next(c for t, c in _RUN_ERRORS.items() if isinstance(exc, t))
        logger.error("%s: %s", code, exc)
        events.emit(_failed(code, str(exc), user_error=False))
        return EXIT_FAILED
    except Exception as exc:
        logger.exception("training failed")
        events.emit(_failed("internal_error", f"{type(exc).__name__}: {exc}", user_error=False))
        return EXIT_FAILED
    events.emit(StatusEvent(status="succeeded"))
    return 0


def _failed(code: str, message: str, *, user_error: bool) -> StatusEvent:
    return StatusEvent(status="failed", code=code, message=message, user_error=user_error)


if __name__ == "__main__":
    exit_process(main())
