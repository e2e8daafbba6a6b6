"""Hugging Face Trainer callbacks: events, checkpoint metadata, and a save at the last step."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainer.checkpoints import directory_bytes, write_metadata
from trainer.compile import compile_stats
from trainer.contract.events import CheckpointEvent, CompileEvent, EvalEvent, EventLog, StepEvent


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class EventCallback(TrainerCallback):
    """Turns Trainer logs, evals and saves into ``events.jsonl`` lines (rank 0 only)."""

    def __init__(self, events: EventLog, metadata: dict[str, Any]) -> None:
        self.events = events
        self.metadata = metadata
        self._last_time = time.monotonic()
        self._last_tokens = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._last_time = time.monotonic()
        self._last_tokens = state.num_input_tokens_seen

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Always keep the final weights: upstream saves only every save_steps.
        if state.global_step >= state.max_steps and args.save_strategy != "no":
            control.should_save = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs or "loss" not in logs:
            return
        loss, grad_norm = logs["loss"], logs.get("grad_norm")
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            # every rank sees the same reduced values, so every rank stops here
            raise TrainingDivergedError(
                f"training diverged at step {state.global_step}: loss {loss}, "
                f"grad_norm {grad_norm}; lower the learning rate or check the data"
            )
        if not state.is_world_process_zero:
            return
        now = time.monotonic()
        tokens = state.num_input_tokens_seen - self._last_tokens
        elapsed = max(now - self._last_time, 1e-9)
        self._last_time, self._last_tokens = now, state.num_input_tokens_seen
        self.events.emit(
            StepEvent(
                step=state.global_step,
                loss=logs["loss"],
                learning_rate=logs.get("learning_rate"),
                grad_norm=logs.get("grad_norm"),
                epoch=logs.get("epoch"),
                tokens_per_second=round(tokens / elapsed, 2),
                # the running count (a resumed run continues its checkpoint's): non-pad input
                # tokens of all ranks trained on so far
                trained_tokens=int(state.num_input_tokens_seen),
            )
        )

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if state.is_world_process_zero and metrics:
            self.events.emit(
                EvalEvent(
                    step=state.global_step,
                    split="validation",
                    metrics=strip_prefix(metrics, "eval_"),
                )
            )

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not checkpoint.is_dir():
            return
        write_metadata(checkpoint, {**self.metadata, "step": state.global_step})
        self.events.emit(
            CheckpointEvent(
                step=state.global_step,
                path=str(checkpoint.resolve()),
                bytes=directory_bytes(checkpoint),
            )
        )


class CompileReport(TrainerCallback):
    """With ``compile: true``: a ``compile`` event when training ends, the compiled ``layers``
    and :func:`trainer.compile.compile_stats` (rank 0 only)."""

    def __init__(self, events: EventLog, layers: int) -> None:
        self.events = events
        self.layers = layers

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            self.events.emit(CompileEvent(layers=self.layers, **compile_stats()))


def strip_prefix(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k.removeprefix(prefix): v for k, v in metrics.items()}
