"""One evaluation, run by its runner thread: resolve every model, tokenize every prompt, keep
many requests per model in flight on the engines (which batch them), store each answer with its
scores as it comes, and score each model once all its answers are stored.

Models over the same base model (a base, its adapters, its checkpoints) run together, so their
requests share batches; models over other bases (or full-SFT checkpoints) run after them, so an
evaluation never needs more models loaded at once than one. Only answers not stored yet are
generated: a resumed evaluation picks up where the last runner stopped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine as SQLEngine

from api.schemas.chat import CheckpointRef, GenerationFields
from api.services.evaluation_store import Progress, RunStore
from core.errors import AppError, ChatCapacity, GenerationFailed, ModelUnavailable
from core.models import Evaluation, EvaluationOutput, EvaluationSample
from core.settings import Settings
from serving.requests import Request

if TYPE_CHECKING:
    from api.services.chat import ChatService, Target
    from serving.engine import Engine
    from serving.events import Event
    from serving.params import GenerationParams

logger = logging.getLogger(__name__)

CAPACITY_RETRY_S = 1.0  # an engine without room for one more adapter: ask again after this
WAIT_S = 0.25  # the longest the loop waits for an answer before checking stop and heartbeat


class Stopping(Exception):  # noqa: N818 - a condition, not an error
    """This process is shutting down: hand the evaluation back."""


@dataclass
class ModelRun:
    """One model of the evaluation and the samples it has not answered yet."""

    name: str
    target: Target
    remaining: deque[int]
    in_flight: dict[int, Request] = field(default_factory=dict)
    not_before: float = 0.0  # after a capacity refusal


class EvaluationRun:
    """Runs ``evaluation`` for runner ``runner`` until it is finished, lost or stopped."""

    def __init__(
        self,
        *,
        db: SQLEngine,
        chat: ChatService,
        settings: Settings,
        evaluation: Evaluation,
        runner: str,
        stopping: threading.Event,
    ) -> None:
        self.chat = chat
        self.settings = settings
        self.evaluation = evaluation
        self.stopping = stopping
        self.store = RunStore(db, evaluation, runner)
        self.answers: queue.Queue[tuple[ModelRun, int, Event]] = queue.Queue()
        params = evaluation.params
        self.fields = GenerationFields(
            max_new_tokens=params["max_new_tokens"],
            temperature=params["temperature"],
            top_p=params["top_p"],
            repetition_penalty=params["repetition_penalty"],
            seed=params.get("seed"),
        )
        self.progress = Progress(
            interval_s=settings.evaluations.progress_interval_s,
            step=max(1, self.store.total // 10),
        )
        self.last_beat = time.monotonic()

    def execute(self) -> None:
        """Generate what is missing, score, finish; ``ClaimLost`` or ``Stopping`` end it early
        and ``AppError`` says why it failed."""
        samples = self.store.samples()
        stored = self.store.stored()
        self.progress.done = self.progress.last_done = len(stored)
        self.store.start(len(stored))
        runs = self._resolve(samples, stored)
        for group in _by_engine(runs):
            self._run_group(group, samples)
        self.store.succeed()

    # ---- models -------------------------------------------------------------------------

    def _resolve(
        self, samples: dict[int, EvaluationSample], stored: set[tuple[str, int]]
    ) -> list[ModelRun]:
        runs = []
        with self.store.session() as session:
            for position, model in enumerate(self.evaluation.models):
                ref = model["ref"]
                ref = ref if isinstance(ref, str) else CheckpointRef.model_validate(ref)
                try:
                    target = self.chat.resolve(session, self.evaluation.tenant_id, ref)
                except AppError as exc:  # deleted or moved since admission
                    raise type(exc)(exc.message, param=f"models.{position}") from exc
                remaining = deque(i for i in sorted(samples) if (model["name"], i) not in stored)
                runs.append(ModelRun(model["name"], target, remaining))
        return runs

    def _engine(self, target: Target) -> Engine:
        """The target's engine, waiting while every model slot of this process is busy."""
        from serving.engine import Engine

        while True:
            self._check()
            try:
                engine = asyncio.run(self.chat.engine(target))
            except ChatCapacity:
                logger.info("evaluation %s waits for a model slot", self.evaluation.id)
                self.stopping.wait(CAPACITY_RETRY_S * 5)
                continue
            if not isinstance(engine, Engine):  # admission refuses vision models
                raise ModelUnavailable(f"{target.name} is not a text model", param="models")
            return engine

    def _finish_model(self, run: ModelRun) -> None:
        from trainer.metrics import score_texts  # jieba and nltk load on first use

        predictions, references = self.store.pairs(run.name)
        self.store.model_finished(run.name, score_texts(predictions, references))

    # ---- generation -----------------------------------------------------------------------

    def _run_group(self, group: list[ModelRun], samples: dict[int, EvaluationSample]) -> None:
        pending = [r for r in group if r.remaining]
        engine = self._engine(group[0].target) if pending else None
        prompts = self._prepare(engine, pending, samples) if engine is not None else {}
        try:
            while any(r.remaining or r.in_flight for r in pending):
                self._check()
                for run in pending:
                    self._submit(engine, run, prompts)
                self._collect(pending, samples)
        finally:
            for run in pending:  # leaving early: stop what is still generating
                for request in run.in_flight.values():
                    request.cancelled = True
        for run in group:
            if run.name not in self.store.metrics:
                self._finish_model(run)

    def _prepare(
        self, engine: Engine, runs: list[ModelRun], samples: dict[int, EvaluationSample]
    ) -> dict[int, tuple[list[int], GenerationParams]]:
        """Every needed prompt's ids, checked before any generation (one tokenizer per group)."""
        prompts: dict[int, tuple[list[int], GenerationParams]] = {}
        for index in sorted({i for r in runs for i in r.remaining}):
            sample = samples[index]
            try:
                ids, params, _ = self.chat.prepare(engine, sample.messages, None, self.fields)
                if not isinstance(ids, list):
                    raise ModelUnavailable("evaluations run text models", param="models")
            except AppError as exc:
                where = f"line {sample.line}" if sample.line is not None else f"index {index}"
                raise type(exc)(
                    f"sample {index} ({where} of dataset {self.evaluation.dataset_id}): "
                    f"{exc.message}",
                    param="dataset",
                    details={"index": index, "line": sample.line},
                ) from exc
            prompts[index] = (ids, params)
        return prompts

    def _submit(
        self,
        engine: Any,
        run: ModelRun,
        prompts: dict[int, tuple[list[int], GenerationParams]],
    ) -> None:
        room = 2 * self.settings.chat.max_batch - len(run.in_flight)
        if room <= 0 or time.monotonic() < run.not_before:
            return
        while run.remaining and room > 0:
            index = run.remaining.popleft()
            ids, params = prompts[index]

            def deliver(event: Event, run: ModelRun = run, index: int = index) -> None:
                if event.kind != "delta":  # on the engine thread; the runner does the rest
                    self.answers.put((run, index, event))

            request = Request(
                ids, params, deliver, adapter=run.target.adapter, background=True, stream=False
            )
            run.in_flight[index] = request
            engine.submit(request)
            room -= 1

    def _collect(self, runs: list[ModelRun], samples: dict[int, EvaluationSample]) -> None:
        """Store the answers that came (waiting a little for the first), or beat."""
        from trainer.metrics import score_texts

        got = []
        try:
            got.append(self.answers.get(timeout=WAIT_S))
            while True:
                got.append(self.answers.get_nowait())
        except queue.Empty:
            pass
        outputs = []
        for run, index, event in got:
            run.in_flight.pop(index, None)
            if event.kind == "done" and event.result is not None:
                result = event.result
                scores = score_texts([result.text], [samples[index].reference])
                outputs.append(
                    EvaluationOutput(
                        evaluation_id=self.evaluation.id,
                        tenant_id=self.evaluation.tenant_id,
                        index=index,
                        model=run.name,
                        text=result.text,
                        finish_reason=result.finish_reason,
                        completion_tokens=result.completion_tokens,
                        scores=scores,
                    )
                )
            elif event.code == "capacity":  # every adapter slot pinned or busy: later
                run.remaining.appendleft(index)
                run.not_before = time.monotonic() + CAPACITY_RETRY_S
            else:
                raise GenerationFailed(f"{run.name} on sample {index}: {event.message}")
        if outputs:
            self.store.add_outputs(outputs, self.progress)
            self.last_beat = time.monotonic()
        for run in runs:
            if not run.remaining and not run.in_flight and run.name not in self.store.metrics:
                self._finish_model(run)

    def _check(self) -> None:
        """Stop when the process stops; beat (and learn of a cancel) every so often."""
        if self.stopping.is_set():
            raise Stopping
        if time.monotonic() - self.last_beat >= self.settings.heartbeat_interval_s:
            self.store.beat()
            self.last_beat = time.monotonic()


def _by_engine(runs: list[ModelRun]) -> list[list[ModelRun]]:
    """Models grouped by the engine that serves them, in the order they were named."""
    groups: dict[tuple[Any, Any], list[ModelRun]] = {}
    for run in runs:
        key = (run.target.model_dir.resolve(), run.target.tokenizer_dir)
        groups.setdefault(key, []).append(run)
    return list(groups.values())
