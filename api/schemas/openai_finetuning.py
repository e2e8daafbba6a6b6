"""OpenAI's fine-tuning object shapes (``file``, ``fine_tuning.job`` and its events and
checkpoints) over glmft's datasets and jobs, and the job-create request OpenAI's SDK sends.

Ids are glmft's own (``ds-…`` is a file, ``job-…`` a job), so the native routes accept them too.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")
Auto = Literal["auto"]
PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
OpenAIStatus = Literal[
    "validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"
]
#: glmft state -> OpenAI status. OpenAI has no "cancelling": a cancel is final once accepted
#: (the worker stops the trainer within seconds; ``glmft.state`` tells the two apart). glmft
#: validates files before it stores a job, so none is ever "validating_files".
STATUS: dict[str, OpenAIStatus] = {
    "queued": "queued",
    "running": "running",
    "cancelling": "cancelled",
    "paused": "paused",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}


class OpenAIList(BaseModel, Generic[T]):
    """OpenAI's list envelope; ``after`` = the last ``id`` of a page gives the next one."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileObject(BaseModel):
    """An uploaded dataset as an OpenAI ``file`` (``status`` error: it failed validation)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int = Field(description="Unix seconds.")
    filename: str
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["processed", "error"]
    status_details: str | None = Field(
        default=None,
        description="The first validation errors; the full report is at GET /datasets/{id}/report.",
    )
    expires_at: int | None = None


class FileDeleted(BaseModel):
    """The answer to a file deletion."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class Hyperparameters(BaseModel):
    """OpenAI's supervised hyperparameters, mapped onto the config's ``training_args``."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | PositiveInt | None = Field(
        default=None, description="num_train_epochs; also clears the config's max_steps."
    )
    batch_size: Auto | PositiveInt | None = Field(
        default=None, description="The global batch: per_device_train_batch_size × GPUs."
    )
    learning_rate_multiplier: Auto | PositiveFloat | None = Field(
        default=None, description="Scales the config's learning_rate."
    )


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    """OpenAI's ``method``: glmft trains supervised (SFT-style) jobs only."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised"]
    supervised: SupervisedMethod | None = None


class GlmftOptions(BaseModel):
    """glmft's own job fields (send them as ``extra_body={"glmft": {...}}``)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "ptuning_v2", "sft"] = "lora"
    config: str | None = Field(
        default=None, description="A shipped preset (`lora`, `tiny/lora`, ...) or a YAML document."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description='Dotted config keys, e.g. {"training_args.max_steps": 8}.'
    )
    gpus: int | None = Field(
        default=None,
        ge=0,
        description="GPUs for the job; 0 trains on CPU. Default: the base model's registry "
        "entry, else 1 when a worker has GPUs and 0 when none has.",
    )
    priority: int = Field(
        default=0, ge=-100, le=100, description="Order inside your tenant's queue (higher first)."
    )


class FineTuningJobCreate(BaseModel):
    """What ``client.fine_tuning.jobs.create(...)`` sends."""

    model_config = ConfigDict(extra="forbid")

    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = Field(
        default=None, description="Deprecated by OpenAI in favour of `method`; both work."
    )
    method: Method | None = None
    seed: int | None = None
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    glmft: GlmftOptions = Field(default_factory=GlmftOptions)


class JobErrorObject(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(BaseModel):
    """The hyperparameters the job trains with (``learning_rate`` is glmft's absolute rate)."""

    n_epochs: Auto | int | float
    batch_size: Auto | int
    learning_rate_multiplier: Auto | float | None = None
    learning_rate: float | None = None


class JobMethod(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: dict[str, JobHyperparameters]


class GlmftJobFields(BaseModel):
    """glmft's view of the job beside OpenAI's."""

    method: str
    state: str
    step: int
    max_steps: int | None
    gpus: int


class FineTuningJob(BaseModel):
    """A glmft job as an OpenAI ``fine_tuning.job``; ``fine_tuned_model`` is the adapter id."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None = None
    error: JobErrorObject | None = None
    fine_tuned_model: str | None = None
    hyperparameters: JobHyperparameters
    method: JobMethod
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: OpenAIStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    metadata: dict[str, Any] | None = None
    suffix: str | None = None
    glmft: GlmftJobFields


class FineTuningJobEvent(BaseModel):
    """A job event; ``type`` metrics for training and eval steps."""

    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any]
    type: Literal["message", "metrics"]


class CheckpointMetrics(BaseModel):
    """The checkpoint's step, its training loss and the evaluation at its step (the upstream
    generation metrics: ROUGE-1/2/L F x 100 and BLEU-4 0-1), when one ran there."""

    step: float
    train_loss: float | None = None
    valid_loss: float | None = None
    valid_rouge_1: float | None = None
    valid_rouge_2: float | None = None
    valid_rouge_l: float | None = None
    valid_bleu_4: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    """A recorded checkpoint; ``fine_tuned_model_checkpoint`` names it for chat."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int
