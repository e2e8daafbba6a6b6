"""HF's ``Seq2SeqTrainingArguments`` of a run: the config's ``training_args``, the memory plan's
choices and glmft's fixed ones (bounded checkpoints, CPU ranks that really share one model,
bf16 on a GPU that has it, the reporting integrations that are installed)."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from transformers import GenerationConfig, Seq2SeqTrainingArguments

from trainer.config import (
    ConfigError,
    ConfigIssue,
    FinetuningConfig,
    report_targets,
    resolve_config_path,
)
from trainer.config_rules import DEFAULT_SAVE_TOTAL_LIMIT
from trainer.contract.command import TrainerArgs
from trainer.distributed import DistInfo, ensure_single_process_group

logger = logging.getLogger(__name__)


def build_training_args(
    config: FinetuningConfig,
    run: TrainerArgs,
    output_dir: Path,
    has_eval: bool,
    generation: GenerationConfig,
    *,
    gradient_checkpointing: bool | None = None,
    checkpoint_every: int = 1,
    micro_batches: int = 1,
) -> Seq2SeqTrainingArguments:
    """HF's arguments from the config's ``training_args`` and glmft's fixed choices; the memory
    plan's ``gradient_checkpointing`` (of every ``checkpoint_every``-th layer) replaces the
    config's own, and its ``micro_batches`` split each batch into gradient-accumulation steps."""
    values = config.hf_training_args()
    if gradient_checkpointing is not None:
        values.pop("gradient_checkpointing", None)  # deprecated alias of activation_checkpointing
        values["activation_checkpointing"] = gradient_checkpointing
        if checkpoint_every > 1:
            options = values.pop("gradient_checkpointing_kwargs", None) or {}
            options = {**options, **(values.get("activation_checkpointing_kwargs") or {})}
            values["activation_checkpointing_kwargs"] = {
                **options,
                "every_n_layers": checkpoint_every,
            }
    if micro_batches > 1:
        values["per_device_train_batch_size"] = config.batch_size // micro_batches
        values["gradient_accumulation_steps"] = config.accumulation_steps * micro_batches
    values["output_dir"] = str(output_dir)
    if values.get("save_total_limit") is None:  # older checkpoints rotate away: bounded disk
        values["save_total_limit"] = DEFAULT_SAVE_TOTAL_LIMIT
    on_gpu = torch.cuda.is_available()
    values["use_cpu"] = not on_gpu  # without it CPU ranks train separate copies, silently
    if on_gpu and "bf16" not in values and "fp16" not in values:
        values["bf16"] = torch.cuda.is_bf16_supported()
    values["report_to"] = report_targets(values.get("report_to")) or "none"
    if "tensorboard" in values["report_to"] and not _tensorboard_installed():
        raise ConfigError(
            [
                ConfigIssue(
                    "training_args.report_to",
                    "tensorboard needs the tensorboardX package on the training machine "
                    "(pip install 'glmft[tensorboard]', or tensorboard), or remove report_to",
                )
            ]
        )
    values["remove_unused_columns"] = False
    values.setdefault("include_num_input_tokens_seen", "non_padding")
    values.setdefault("logging_nan_inf_filter", False)  # a NaN must show, not be logged as 0.0
    cores = os.cpu_count() or 1
    if values.get("dataloader_num_workers", 0) > cores:
        logger.warning(
            "dataloader_num_workers=%s capped to %s CPU cores",
            values["dataloader_num_workers"],
            cores,
        )
        values["dataloader_num_workers"] = cores
    if not has_eval:
        values["eval_strategy"] = "no"
        values["do_eval"] = False
    if values.get("deepspeed"):
        values["deepspeed"] = str(resolve_config_path(values["deepspeed"], run.config_path))
        ensure_single_process_group()
    try:
        args = Seq2SeqTrainingArguments(**values, generation_config=generation)
    except (TypeError, ValueError) as exc:
        raise ConfigError([ConfigIssue("training_args", str(exc))]) from exc
    if on_gpu and not DistInfo.from_env().launched and args.n_gpu > 1:
        # Without a launcher HF would wrap the model in nn.DataParallel: a silently larger batch
        # and all activations on GPU 0. One process trains on one GPU; torchrun uses them all.
        logger.warning(
            "%d GPUs visible but not launched with torchrun: training on one GPU; use "
            "torchrun --nproc_per_node=%d -m trainer.finetune ...",
            args.n_gpu,
            args.n_gpu,
        )
        args._n_gpu = 1
    return args


def _tensorboard_installed() -> bool:
    # transformers' TensorBoardCallback writes through torch's SummaryWriter (the tensorboard
    # package) or tensorboardX's; its logs land in <output_dir>/runs/
    return any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX"))
