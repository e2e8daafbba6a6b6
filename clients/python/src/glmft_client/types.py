"""Pydantic models of what the glmft API sends and takes.

Each mirrors a schema of the server's OpenAPI document (a test compares them field by field).
Responses accept fields this version does not know yet (``extra="allow"``), so a newer server
does not break an older client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")
Method = Literal["lora", "ptuning_v2", "sft"]
#: States after which a job changes no more.
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- lists -------------------------------------------------------------------------------


class Page(_Response, Generic[T]):
    """A page of a list; pass ``next_cursor`` as ``after`` for the next one."""

    data: list[T]
    has_more: bool = Field(description="Whether another page follows.")
    next_cursor: str | None = Field(default=None, description="The next page's `after`.")


class ListOf(_Response, Generic[T]):
    """A complete list."""

    data: list[T]


# --- datasets ----------------------------------------------------------------------------


class Issue(_Response):
    """One problem of a data file, with its position."""

    file: str
    line: int | None = Field(description="1-based line (JSONL) or the element's first line.")
    index: int | None = Field(description="0-based conversation index; null for file-level.")
    path: str = Field(description="JSON path inside the conversation.")
    code: str = Field(description="Stable issue code, e.g. role_invalid.")
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path or '<conversation>'}: {self.message} [{self.code}]"


class ValidationReport(_Response):
    """The validator's report: errors make a dataset unusable, warnings do not."""

    valid: bool
    conversations: int
    errors: list[Issue]
    warnings: list[Issue]
    stats: dict[str, Any] = Field(default_factory=dict, description="Token statistics.")
    truncated: bool = Field(default=False, description="More issues existed than were kept.")


class Dataset(_Response):
    """An uploaded dataset."""

    id: str
    object: Literal["dataset"] = "dataset"
    filename: str
    bytes: int
    sha256: str
    conversations: int
    valid: bool = Field(description="Only a valid dataset can feed a job.")
    error_count: int
    warning_count: int
    base_model: str | None = Field(description="The model whose tokenizer gave the stats.")
    created_at: datetime


class DatasetWithReport(Dataset):
    """An upload's answer: the dataset and its full report."""

    report: ValidationReport


# --- jobs --------------------------------------------------------------------------------


class JobCheckRequest(_Request):
    """The body of ``POST /jobs/check``: a job's model, method, config and GPUs."""

    model: str = Field(description="A base model of the registry.")
    method: Method
    config: str | None = Field(default=None, description="A preset name or a YAML document.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted config keys.")
    gpus: int | None = Field(
        default=None, description="GPUs; 0 trains on CPU; None: the server's default."
    )
    seed: int | None = None


class JobCreateRequest(JobCheckRequest):
    """The body of ``POST /jobs``."""

    training_dataset: str = Field(description="Id of a valid dataset.")
    validation_dataset: str | None = None
    suffix: str | None = Field(default=None, description="Part of the adapter id.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Filterable pairs.")
    priority: int = Field(default=0, description="In your tenant's queue: higher first.")


class JobCheck(_Response):
    """What ``POST /jobs`` would make of a job; nothing was stored or queued."""

    object: Literal["job.check"] = "job.check"
    model: str
    method: str
    gpus: int = Field(description="The GPUs the job would get (the default filled in).")
    max_steps: int | None = None
    config: dict[str, Any] = Field(description="The resolved config, fitted to the base model.")
    notes: list[str] = Field(default_factory=list, description="What was filled in, and why.")


class ResumeRequest(_Request):
    """The body of ``POST /jobs/{id}/resume``."""

    checkpoint_step: int | None = Field(default=None, description="Default: the newest.")


class JobError(_Response):
    """Why a job failed, and whose fault it was."""

    code: str
    message: str
    param: str | None = None
    user_error: bool | None = Field(default=None, description="True: bad data or config.")


class Job(_Response):
    """A fine-tuning job."""

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
        description="Your tenant's queued jobs that start before this one, as of about a second "
        "ago.",
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
    adapter_id: str | None = Field(default=None, description="Set when the job succeeded.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None

    @property
    def done(self) -> bool:
        """Whether the job is finished (succeeded, failed or cancelled)."""
        return self.state in TERMINAL_STATES


class JobEvent(_Response):
    """One event of a job: each state it entered (``queued``, ``running``, ``paused``,
    ``cancelled``, ``failed``, ``succeeded``, ...) and the trainer's (``started``, ``step``,
    ``eval``, ``checkpoint``, ``status``, ...)."""

    id: int
    job_id: str
    kind: str
    message: str
    data: dict[str, Any]
    created_at: datetime


class Metric(_Response):
    """One recorded metric value."""

    id: int
    step: int
    split: str = Field(description="train | validation | test")
    name: str
    value: float
    created_at: datetime


class Checkpoint(_Response):
    """A checkpoint the worker recorded."""

    step: int
    bytes: int
    metrics: dict[str, Any]
    created_at: datetime


# --- models and adapters -----------------------------------------------------------------


class Model(_Response):
    """A base model of the registry, or a fine-tuned adapter over one."""

    id: str
    object: Literal["model"] = "model"
    kind: Literal["base", "adapter"]
    base_model: str
    description: str = ""
    method: str | None = None
    job_id: str | None = None
    step: int | None = None
    created_at: datetime


class Adapter(_Response):
    """A fine-tuned adapter and whether the chat engine holds it in memory."""

    id: str
    base_model: str
    method: str
    job_id: str | None = None
    step: int | None = None
    created_at: datetime
    loaded: bool
    pinned: bool


class AdapterLoadRequest(_Request):
    """The body of ``POST /adapters/{id}/load``."""

    pin: bool = Field(default=False, description="Keep it loaded (never evicted).")


# --- chat --------------------------------------------------------------------------------


class CheckpointRef(_Request):
    """A job's checkpoint, to chat with before (or instead of) promoting it."""

    job: str
    checkpoint: int


class ChatRequest(_Request):
    """The body of ``POST /chat``; unset sampling fields take the server's defaults."""

    model: str | CheckpointRef
    messages: list[dict[str, Any]] = Field(description="GLM-4 format messages.")
    tools: list[dict[str, Any]] | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    stream: bool = False


class ToolCall(_Response):
    """A function call the model made."""

    name: str
    arguments: dict[str, Any]


class ChatMessage(_Response):
    """The assistant's answer."""

    role: Literal["assistant"] = "assistant"
    content: str
    tool_call: ToolCall | None = None


class ChatUsage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatTimings(_Response):
    queue_ms: float
    prefill_ms: float
    total_ms: float
    tokens_per_second: float


class ChatResponse(_Response):
    """One chat completion."""

    id: str
    model: str
    message: ChatMessage
    finish_reason: Literal["stop", "length", "tool_call"]
    usage: ChatUsage
    timings: ChatTimings


class ChatDelta(_Response):
    """A piece of a streamed answer."""

    text: str


# --- evaluations -------------------------------------------------------------------------

#: The metrics of an evaluation: ROUGE-1/2/L F x 100 and BLEU-4 (0-1), the upstream demo's.
METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")


class EvaluationCreateRequest(_Request):
    """The body of ``POST /evaluations``; unset fields take the server's defaults
    (128 new tokens, greedy, the whole dataset)."""

    models: list[str | CheckpointRef] = Field(description="1 to 8 models, side by side.")
    dataset: str = Field(description="Id of a valid dataset.")
    max_new_tokens: int | None = None
    limit: int | None = Field(default=None, description="Only the first N conversations.")
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    name: str | None = None


class EvaluationProgress(_Response):
    done: int = Field(description="Answers stored.")
    total: int = Field(description="Samples x models.")


class EvaluationError(_Response):
    """Why an evaluation failed."""

    code: str
    message: str
    param: str | None = None


class Evaluation(_Response):
    """An evaluation: the models' metrics side by side once each has answered every sample."""

    id: str
    object: Literal["evaluation"] = "evaluation"
    name: str | None = None
    state: str = Field(description="queued | running | succeeded | failed | cancelled")
    models: list[str]
    dataset: str
    max_new_tokens: int
    limit: int | None = None
    temperature: float
    top_p: float
    repetition_penalty: float
    seed: int | None = None
    samples: int = Field(description="Conversations evaluated.")
    skipped: int = Field(description="Conversations without a final assistant reply.")
    progress: EvaluationProgress
    metrics: dict[str, dict[str, float]] = Field(description="{model: {metric: value}}.")
    error: EvaluationError | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        """Whether the evaluation is finished (succeeded, failed or cancelled)."""
        return self.state in TERMINAL_STATES


class SampleOutput(_Response):
    """One model's answer to a sample, and its scores."""

    text: str
    finish_reason: str
    completion_tokens: int
    scores: dict[str, float]


class EvaluationSample(_Response):
    """A prompt, its reference and each model's answer."""

    index: int = Field(description="The conversation's 0-based position in the dataset.")
    line: int | None = None
    messages: list[dict[str, Any]] = Field(description="The prompt.")
    reference: str
    outputs: dict[str, SampleOutput] = Field(description="{model: output}.")


class EvaluationEvent(_Response):
    """One event of an evaluation (created, started, progress, model_finished, succeeded...)."""

    id: int
    evaluation_id: str
    kind: str
    message: str
    data: dict[str, Any]
    created_at: datetime
