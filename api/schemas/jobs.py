"""Job schemas: the create request, the public job, its events, metrics and checkpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.config import JsonDict

from api.schemas.common import UtcDatetime
from trainer.config_rules import INT_MAX, MAX_DEPTH, measure

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
MAX_METADATA_KEYS = 16
MAX_OVERRIDES = 64
#: a YAML document sent as ``config`` (the resolved config has its own limit, in settings)
MAX_CONFIG_TEXT = 64 * 1024
ResourceId = Annotated[str, StringConstraints(min_length=1, max_length=64)]

_CREATE_EXAMPLE: JsonDict = {
    "model": "glm-4-9b-chat-hf",
    "method": "lora",
    "training_dataset": "ds-9c1f0e2d3b4a5c6d7e8f9a0b",
    "validation_dataset": "ds-0a9b8c7d6e5f4a3b2c1d0e9f",
    "config": "lora",
    "overrides": {"training_args.max_steps": 500, "training_args.learning_rate": 0.0002},
    "gpus": 1,
    "seed": 42,
    "suffix": "support-bot",
    "metadata": {"team": "support", "ci_run": "1842"},
}


class JobSpec(BaseModel):
    """What a job trains: the base model, the method, the config and the GPUs."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        max_length=200, description="A base model of the registry (see GET /models)."
    )
    method: Literal["lora", "ptuning_v2", "sft"]
    config: str | None = Field(
        default=None,
        max_length=MAX_CONFIG_TEXT,
        description="A shipped preset name (`lora`, `tiny/lora`, ...) or an upstream-style YAML "
        "document. Default: the preset named like `method`.",
    )
    overrides: dict[Annotated[str, StringConstraints(max_length=200)], Any] = Field(
        default_factory=dict,
        max_length=MAX_OVERRIDES,
        description='Dotted config keys to set, e.g. {"training_args.max_steps": 500}.',
    )
    gpus: int | None = Field(
        default=None,
        ge=0,
        le=1024,
        description="GPUs for the job; 0 trains on CPU. Default: the base model's `gpus` in the "
        "registry, else 1 when a worker has GPUs and 0 when none has.",
    )
    seed: int | None = Field(default=None, ge=0, le=INT_MAX, description="Sets training_args.seed.")

    @field_validator("overrides")
    @classmethod
    def _shallow(cls, value: dict[str, Any]) -> dict[str, Any]:
        depth = measure(value).depth
        if depth > MAX_DEPTH:
            raise ValueError(f"values are nested {depth} levels deep; at most {MAX_DEPTH}")
        return value


class JobCheckRequest(JobSpec):
    """A job to check without creating it (no dataset needed yet)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"model": "glm-4-tiny", "method": "lora", "config": "tiny/lora"}]
        },
    )


class JobCheck(BaseModel):
    """What POST /jobs would make of a request; nothing was stored or queued."""

    object: Literal["job.check"] = "job.check"
    model: str
    method: str
    gpus: int = Field(description="The GPUs the job would get (the default filled in).")
    max_steps: int | None = None
    config: dict[str, Any] = Field(description="The resolved config, fitted to the base model.")
    notes: list[str] = Field(
        default_factory=list, description="What was filled in or read differently, and why."
    )


class JobCreate(JobSpec):
    """A fine-tuning job to run."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_CREATE_EXAMPLE]})

    training_dataset: ResourceId = Field(description="Id of a valid dataset of yours.")
    validation_dataset: ResourceId | None = Field(
        default=None, description="Id of a valid dataset."
    )
    suffix: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9-]{0,39}$",
        description="Part of the adapter id `ft:<base>:<suffix>:<job>`.",
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, description=f"Up to {MAX_METADATA_KEYS} string pairs, filterable."
    )
    priority: int = Field(
        default=0,
        ge=-100,
        le=100,
        description="Order inside your tenant's queue: higher starts first (tenants take "
        "turns whatever their priorities).",
    )

    @field_validator("metadata")
    @classmethod
    def _few_keys(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} keys")
        return value


class ResumeRequest(BaseModel):
    """Where to resume from."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_step: int | None = Field(
        default=None,
        ge=0,
        le=INT_MAX,
        description="A recorded checkpoint's step; default: the newest one.",
    )


class JobError(BaseModel):
    """Why a job failed, and whose fault it was."""

    code: str
    message: str
    param: str | None = None
    user_error: bool | None = Field(
        default=None, description="True: bad data or config; false: a system failure."
    )


class JobPublic(BaseModel):
    """A fine-tuning job."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "job-3f2a9c0d1e4b5a6f7c8d9e0f",
                    "object": "job",
                    "state": "running",
                    "model": "glm-4-9b-chat-hf",
                    "method": "lora",
                    "training_dataset": "ds-9c1f0e2d3b4a5c6d7e8f9a0b",
                    "gpus": 1,
                    "step": 120,
                    "max_steps": 500,
                    "progress": 0.24,
                    "latest_metrics": {"train": {"loss": 1.73, "learning_rate": 0.0002}},
                    "created_at": "2026-11-28T04:10:00Z",
                }
            ]
        }
    )

    id: str
    object: Literal["job"] = "job"
    state: str = Field(description="queued|running|cancelling|paused|succeeded|failed|cancelled")
    model: str
    method: str
    training_dataset: str
    validation_dataset: str | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="The resolved config.")
    gpus: int
    priority: int = 0
    seed: int | None = None
    suffix: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    queue_position: int | None = Field(
        default=None,
        description="Your tenant's queued jobs that start before this one (GET /jobs/{id}, "
        "while queued), as of about a second ago; other tenants' jobs take turns with them.",
    )
    step: int = 0
    max_steps: int | None = None
    progress: float | None = Field(default=None, description="step / max_steps, 0..1.")
    latest_metrics: dict[str, dict[str, float]] | None = Field(
        default=None, description="{split: {name: value}} at each metric's newest step."
    )
    attempt: int = 0
    max_attempts: int
    worker: str | None = None
    gpu_ids: list[int] = Field(default_factory=list)
    resume_from_step: int | None = None
    cancel_requested: bool = False
    error: JobError | None = None
    adapter_id: str | None = None
    created_at: UtcDatetime
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None
    heartbeat_at: UtcDatetime | None = None


class EventPublic(BaseModel):
    """One event of a job (claimed, step, eval, checkpoint, error, ...), in order of ``id``."""

    id: int
    job_id: str
    kind: str
    message: str
    data: dict[str, Any]
    created_at: UtcDatetime


class MetricPublic(BaseModel):
    """One recorded metric value."""

    id: int
    step: int
    split: str = Field(description="train | validation | test")
    name: str
    value: float
    created_at: UtcDatetime


class CheckpointPublic(BaseModel):
    """A checkpoint the worker recorded (machine paths are not exposed)."""

    step: int
    bytes: int
    metrics: dict[str, Any]
    created_at: UtcDatetime
