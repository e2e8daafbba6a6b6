"""Map OpenAI's fine-tuning API onto glmft's datasets and jobs: the create request becomes a
:class:`api.schemas.jobs.JobCreate`, rows become OpenAI objects, ``after=<id>`` becomes a cursor.

Nothing here decides anything a native route would not: validation, idempotency, capacity and
state changes stay in :mod:`api.services.jobs` and :mod:`api.services.job_actions`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import and_, func
from sqlmodel import Session, col, select

from api.pagination import encode_cursor
from api.schemas.common import as_utc
from api.schemas.jobs import JobCreate
from api.schemas.openai_finetuning import (
    STATUS,
    CheckpointMetrics,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    GlmftJobFields,
    Hyperparameters,
    JobErrorObject,
    JobHyperparameters,
    JobMethod,
)
from api.services.job_config import resolve_config
from core.errors import AppError, Invalid
from core.jobs import adapter_id
from core.models import Checkpoint, Dataset, Job, JobEvent, Metric
from trainer.config_rules import INT_MAX

#: glmft's request fields -> the OpenAI request's (errors name what the caller sent).
_PARAMS = {
    "training_dataset": "training_file",
    "validation_dataset": "validation_file",
    "method": "glmft.method",
    "gpus": "glmft.gpus",
    "priority": "glmft.priority",
}
#: Hugging Face's TrainingArguments defaults, for configs that leave these unset.
HF_LEARNING_RATE, HF_BATCH_SIZE, HF_EPOCHS, HF_SEED = 5e-5, 8, 3.0, 42
EVENT_PREFIX, CHECKPOINT_PREFIX = "ftevent-", "ftckpt-"
#: The train metric the worker records from the trainer's running count of trained tokens.
TRAINED_TOKENS = "trained_tokens"
#: Evaluation metrics a checkpoint reports, as ``valid_<name>`` (trainer.metrics.METRIC_KEYS).
_EVAL_METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")
_STATUS_DETAIL_ERRORS = 3


def unix(value: datetime | None) -> int | None:
    """Unix seconds of a stored timestamp."""
    return None if value is None else int(as_utc(value).timestamp())


def openai_param(param: str | None) -> str | None:
    """The OpenAI request's name for a glmft request field."""
    if param is None:
        return None
    if param.startswith(("overrides", "config")):
        return f"glmft.{param}"
    return _PARAMS.get(param, param)


def renamed(exc: AppError) -> AppError:
    """``exc`` with its ``param`` named as the OpenAI request names it."""
    exc.param = openai_param(exc.param)
    return exc


# --- files -------------------------------------------------------------------------------


def file_object(dataset: Dataset) -> FileObject:
    """A dataset as an OpenAI ``file``."""
    details = None
    if not dataset.valid:
        errors = dataset.report.get("errors", [])[:_STATUS_DETAIL_ERRORS]
        shown = "; ".join(
            f"{dataset.filename}:{e['line']}: {e['path'] or '<conversation>'}: {e['message']} "
            f"[{e['code']}]"
            for e in errors
        )
        count = dataset.error_count
        details = (
            f"{count} validation error{'s' if count != 1 else ''}: {shown} "
            f"(full report: GET /datasets/{dataset.id}/report)"
        )
    return FileObject(
        id=dataset.id,
        bytes=dataset.bytes,
        created_at=unix(dataset.created_at) or 0,
        filename=dataset.filename,
        status="processed" if dataset.valid else "error",
        status_details=details,
    )


def cursor_after(
    session: Session, kind: Literal["file", "job"], tenant: str, after: str | None
) -> str | None:
    """The native cursor just past the caller's file or job ``after`` (OpenAI pages by id)."""
    if after is None:
        return None
    row: Dataset | Job | None = (
        session.get(Dataset, after) if kind == "file" else session.get(Job, after)
    )
    if row is None or row.tenant_id != tenant:
        raise Invalid(f"after: {after!r} is not one of your ids", param="after")
    return encode_cursor(row.created_at, row.id)


# --- job create --------------------------------------------------------------------------


def _hyperparameters(body: FineTuningJobCreate) -> Hyperparameters:
    supervised = body.method.supervised if body.method else None
    if supervised is not None and supervised.hyperparameters is not None:
        return supervised.hyperparameters
    return body.hyperparameters or Hyperparameters()


def _base_learning_rate(body: FineTuningJobCreate, overrides: dict[str, Any]) -> float:
    resolved = resolve_config(
        method=body.glmft.method,
        config=body.glmft.config,
        overrides=overrides,
        seed=body.seed,
        has_validation=False,  # the files do not change the learning rate
    )
    return float(resolved.config["training_args"].get("learning_rate", HF_LEARNING_RATE))


def job_overrides(body: FineTuningJobCreate) -> dict[str, Any]:
    """glmft's overrides with OpenAI's hyperparameters applied (explicit overrides win,
    except that ``learning_rate_multiplier`` scales whatever learning rate they leave)."""
    hp = _hyperparameters(body)
    overrides: dict[str, Any] = {}
    if isinstance(hp.n_epochs, int):
        overrides["training_args.num_train_epochs"] = hp.n_epochs
        overrides["training_args.max_steps"] = -1  # a max_steps > 0 would override the epochs
    if isinstance(hp.batch_size, int):
        devices = max(1, body.glmft.gpus or 0)
        if hp.batch_size % devices:
            raise Invalid(
                f"batch_size {hp.batch_size} is not divisible by the job's {devices} GPUs",
                param="hyperparameters.batch_size",
            )
        overrides["training_args.per_device_train_batch_size"] = hp.batch_size // devices
    overrides.update(body.glmft.overrides)
    if isinstance(hp.learning_rate_multiplier, float | int):
        base = _base_learning_rate(body, overrides)
        overrides["training_args.learning_rate"] = base * hp.learning_rate_multiplier
    return overrides


def job_create(body: FineTuningJobCreate) -> JobCreate:
    """The native create request; raises ``Invalid`` naming the OpenAI field at fault."""
    if body.integrations:
        raise Invalid("integrations are not supported by glmft", param="integrations")
    try:
        return JobCreate(
            model=body.model,
            method=body.glmft.method,
            training_dataset=body.training_file,
            validation_dataset=body.validation_file,
            config=body.glmft.config,
            overrides=job_overrides(body),
            gpus=body.glmft.gpus,
            priority=body.glmft.priority,
            seed=body.seed,
            suffix=body.suffix,
            metadata=body.metadata or {},
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise Invalid(f"{param}: {first['msg']}", param=openai_param(param)) from exc


# --- job objects -------------------------------------------------------------------------


def _epochs(args: dict[str, Any]) -> int | float | Literal["auto"]:
    """``num_train_epochs``, or ``auto`` when a positive ``max_steps`` decides the length."""
    max_steps = args.get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        return "auto"
    epochs = float(args.get("num_train_epochs", HF_EPOCHS))
    return int(epochs) if epochs.is_integer() else epochs


def _job_hyperparameters(job: Job) -> JobHyperparameters:
    args: dict[str, Any] = job.config.get("training_args", {})
    per_device = int(args.get("per_device_train_batch_size", HF_BATCH_SIZE))
    return JobHyperparameters(
        n_epochs=_epochs(args),
        batch_size=per_device * max(1, job.gpus),
        learning_rate=float(args.get("learning_rate", HF_LEARNING_RATE)),
    )


def trained_tokens(session: Session, job_ids: list[str]) -> dict[str, int]:
    """The tokens each job trained on (non-pad, all ranks): the trainer's running count at the
    job's newest step; a resumed attempt continues the count of its checkpoint."""
    if not job_ids:
        return {}
    mine = (
        col(Metric.job_id).in_(job_ids),
        Metric.split == "train",
        Metric.name == TRAINED_TOKENS,
    )
    newest = (
        select(Metric.job_id, func.max(Metric.step).label("step"))
        .where(*mine)
        .group_by(col(Metric.job_id))
        .subquery()
    )
    rows = session.exec(
        select(Metric.job_id, Metric.value)
        .join(
            newest,
            and_(col(Metric.job_id) == newest.c.job_id, col(Metric.step) == newest.c.step),
        )
        .where(*mine)
        .order_by(col(Metric.id))
    ).all()
    return {job_id: int(value) for job_id, value in rows}


def fine_tuning_job(job: Job, tokens: int | None = None) -> FineTuningJob:
    """A job as an OpenAI ``fine_tuning.job``; ``tokens``: its :func:`trained_tokens`."""
    error = None
    if job.error_code:
        error = JobErrorObject(
            code=job.error_code, message=job.error_message or "", param=job.error_param
        )
    hyperparameters = _job_hyperparameters(job)
    seed = job.seed if job.seed is not None else job.config.get("training_args", {}).get("seed")
    return FineTuningJob(
        id=job.id,
        created_at=unix(job.created_at) or 0,
        finished_at=unix(job.finished_at),
        error=error,
        fine_tuned_model=job.adapter_id,
        hyperparameters=hyperparameters,
        method=JobMethod(supervised={"hyperparameters": hyperparameters}),
        model=job.model,
        organization_id=job.tenant_id,
        seed=int(seed if seed is not None else HF_SEED),
        status=STATUS.get(job.state, "running"),
        trained_tokens=tokens,
        training_file=job.training_dataset_id,
        validation_file=job.validation_dataset_id,
        metadata=job.user_metadata or None,
        suffix=job.suffix,
        glmft=GlmftJobFields(
            method=job.method,
            state=job.state,
            step=job.step,
            max_steps=job.max_steps,
            gpus=job.gpus,
        ),
    )


# --- events and checkpoints --------------------------------------------------------------


def _prefixed_id(value: str | None, prefix: str) -> int | None:
    if value is None:
        return None
    number = value.removeprefix(prefix)
    if not number.isdigit() or int(number) > INT_MAX:  # ids are SQL integers
        raise Invalid(f"after: {value!r} is not an id of this list", param="after")
    return int(number)


def list_events(
    session: Session, job: Job, *, after: str | None, limit: int
) -> tuple[list[FineTuningJobEvent], bool]:
    """The job's events newest first (as OpenAI lists them), older than ``after``."""
    statement = select(JobEvent).where(JobEvent.job_id == job.id)
    before = _prefixed_id(after, EVENT_PREFIX)
    if before is not None:
        statement = statement.where(col(JobEvent.id) < before)
    rows = session.exec(statement.order_by(col(JobEvent.id).desc()).limit(limit + 1)).all()
    return [_event(e) for e in rows[:limit]], len(rows) > limit


def _event(event: JobEvent) -> FineTuningJobEvent:
    failed = event.kind in ("error", "failed") or (
        event.kind == "status" and event.data.get("status") == "failed"
    )
    return FineTuningJobEvent(
        id=f"{EVENT_PREFIX}{event.id}",
        created_at=unix(event.created_at) or 0,
        level="error" if failed else "info",
        message=event.message or event.kind,
        data=event.data,
        type="metrics" if event.kind in ("step", "eval") else "message",
    )


def checkpoint_model(job: Job, step: int) -> str:
    """OpenAI's ``fine_tuned_model_checkpoint``: ``<job's adapter id>:ckpt-<step>``, a model id
    chat accepts as it is (and the id ``POST /jobs/{id}/checkpoints/{step}/promote`` gives)."""
    return adapter_id(job, step)


def list_checkpoints(
    session: Session, job: Job, *, after: str | None, limit: int
) -> tuple[list[FineTuningJobCheckpoint], bool]:
    """The job's checkpoints newest first, older than ``after``."""
    statement = select(Checkpoint).where(Checkpoint.job_id == job.id)
    before = _prefixed_id(after, CHECKPOINT_PREFIX)
    if before is not None:
        statement = statement.where(col(Checkpoint.id) < before)
    rows = session.exec(statement.order_by(col(Checkpoint.id).desc()).limit(limit + 1)).all()
    losses = {
        m.step: m.value
        for m in session.exec(
            select(Metric).where(
                Metric.job_id == job.id, Metric.split == "train", Metric.name == "loss"
            )
        ).all()
    }
    data = [
        FineTuningJobCheckpoint(
            id=f"{CHECKPOINT_PREFIX}{c.id}",
            created_at=unix(c.created_at) or 0,
            fine_tuned_model_checkpoint=checkpoint_model(job, c.step),
            fine_tuning_job_id=job.id,
            metrics=CheckpointMetrics(
                step=c.step,
                train_loss=losses.get(c.step),
                valid_loss=c.metrics.get("loss"),
                **{f"valid_{k.replace('-', '_')}": c.metrics.get(k) for k in _EVAL_METRICS},
            ),
            step_number=c.step,
        )
        for c in rows[:limit]
    ]
    return data, len(rows) > limit
