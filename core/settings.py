"""The one settings object (env prefix ``GLMFT_``, nested delimiter ``__``).

Defaults are the embedded mode: everything under ``GLMFT_HOME`` (``~/.glmft``), SQLite as the
store and an SQLite-backed Celery broker, so one machine needs no other service. Production sets
``GLMFT_DATABASE_URL`` (PostgreSQL) and ``GLMFT_BROKER_URL`` (Redis).

Base models are registered by name, either one variable per field,
``GLMFT_MODELS__glm_4_9b_chat__PATH=/models/glm-4-9b-chat-hf`` (a shell variable name cannot hold
``-``, so ``_`` in a registry name reads as ``-``: this names ``glm-4-9b-chat``), or all at once as
JSON, ``GLMFT_MODELS='{"glm-4-9b-chat": {"path": "/models/glm-4-9b-chat-hf", "gpus": 1}}'``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BaseModelEntry(BaseModel):
    """A base model in the registry: adapters record its name, never its path."""

    path: Path
    description: str = ""
    # Load this checkpoint's own modeling code (e.g. the original GLM-4V-9B). The operator's
    # choice for one entry (GLMFT_MODELS__<name>__TRUST_REMOTE_CODE=true); never a job's.
    trust_remote_code: bool = False
    # GPUs a job on this base gets when it asks for none; unset: 1 when a worker has GPUs,
    # else 0 (the API's default_gpus)
    gpus: int | None = Field(default=None, ge=0)


class Limits(BaseModel):
    """What one request or one job may cost."""

    max_upload_bytes: int = 2 * 1024**3
    # every other request body (JSON), refused with 413 before any of it is parsed
    max_request_bytes: int = 1024**2
    # a job's resolved config as JSON (YAML aliases expanded), and any one string in it
    max_config_bytes: int = 64 * 1024
    max_config_string: int = 4096
    # bytes a job directory may hold (checkpoints, logs); the worker stops a job over it
    max_job_disk_bytes: int = 500 * 1024**3
    # a dataset archive (.zip / .tar.gz of train.jsonl, dev.jsonl and images), once unpacked
    max_archive_bytes: int = 8 * 1024**3
    max_archive_files: int = 100_000
    max_image_pixels: int = 40_000_000  # width x height an image may declare (decoded size)
    max_gpus_per_job: int = 8
    max_attempts: int = 3


class ChatSettings(BaseModel):
    """The chat engine: where it runs and what it may hold (ARCHITECTURE.md decision 8)."""

    # "" runs the engine in the API process; a URL (e.g. http://gpu-node-3:8000) sends chat
    # requests to a glmft replica there, which runs its own embedded engine
    remote_url: str = ""
    max_models: int = 2  # base models / full-SFT checkpoints loaded at once
    # per base model: adapters loaded at once, and LoRA pool slots; least recently used idle
    # unpinned ones are unloaded
    max_adapters: int = 16
    max_adapter_bytes: int | None = None
    max_lora_rank: int = 64
    max_batch: int = 64  # rows decoded together
    # the paged key/value cache; unset: 60% of the GPU memory free once the model is loaded
    # (256 MiB on a CPU)
    cache_gib: float | None = None
    max_prefill_tokens: int = 8192  # prompt tokens prefilled in one step
    cuda_graphs: bool = True
    max_new_tokens: int = 4096  # the most one request may ask for
    max_prompt_tokens: int = 8192
    # a chat request's body: room for an image of 20 MiB, base64-encoded (other requests have
    # limits.max_request_bytes); it is decoded off the event loop
    max_request_bytes: int = 32 * 1024**2
    # characters of all messages and tools together, checked before any tokenizing: no
    # prompt this long can fit max_prompt_tokens, and tokenizing it would only cost time
    max_prompt_chars: int = 65536
    max_messages: int = 256


class EvaluationSettings(BaseModel):
    """Evaluations, run by a thread of each process that serves chat itself."""

    max_samples: int = 10_000  # conversations one evaluation may hold (``limit`` takes fewer)
    poll_interval_s: float = 2.0  # how often an idle runner looks for a queued evaluation
    progress_interval_s: float = 5.0  # the longest gap between two ``progress`` events


class QuotaSettings(BaseModel):
    """Every tenant's default quotas; a tenant's row may override each one (``glmft tenants
    set``, ``PUT /tenants/{id}/quotas``). ``None`` is no limit."""

    max_running_jobs: int | None = Field(default=None, ge=0)  # more wait in the queue
    max_queued_jobs: int | None = Field(default=None, ge=0)  # more are refused (429)
    # GPUs the tenant's running jobs hold at once; a job asking for more is refused (429)
    max_gpus: int | None = Field(default=None, ge=0)
    # datasets (unpacked) + checkpoints; an upload or a checkpoint past it is refused
    max_storage_bytes: int | None = Field(default=None, ge=0)


class WebhookSettings(BaseModel):
    """Webhook delivery: signed POSTs from the workers' dispatcher, retried from SQL."""

    # targets on loopback, private, link-local or reserved addresses; None: allowed exactly
    # when ``allow_anonymous`` is (the local mode of ``glmft up`` on loopback)
    allow_private_targets: bool | None = None
    timeout_s: float = 10.0
    max_attempts: int = Field(default=12, ge=1)
    retry_base_s: float = 10.0  # the wait after the first failure; doubles per attempt
    retry_max_s: float = 3600.0
    poll_interval_s: float = 2.0  # how often a dispatcher looks for due deliveries
    lease_s: float = 60.0  # a delivery in flight is retried after this if its sender died
    max_per_tenant: int = 20


class EnvApiKey(BaseModel):
    """A key of ``GLMFT_API_KEYS`` with its scopes (a bare tenant name gets read and write)."""

    tenant: str
    scopes: list[str] = Field(default_factory=lambda: ["read", "write"])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GLMFT_", env_nested_delimiter="__", extra="ignore"
    )

    home: Path = Field(default_factory=lambda: Path.home() / ".glmft")
    database_url: str | None = None
    broker_url: str | None = None
    artifact_root: Path | None = None
    models: dict[str, BaseModelEntry] = Field(default_factory=dict)
    worker_gpus: list[int] = Field(default_factory=list)
    worker_name: str | None = None
    heartbeat_interval_s: float = 5.0
    heartbeat_timeout_s: float = 60.0
    # a queued job whose broker message is missing (a broker restart without persistence, an
    # API killed between commit and publish) is published again once it is this old
    publish_grace_s: float = 60.0
    # how long a worker keeps supervising its trainer while the store cannot be reached; past
    # it the trainer is stopped (checkpoints kept) and the job left to the reaper
    store_outage_limit_s: float = 3600.0
    # uploads that never became a dataset (an API killed mid-upload) are removed when older
    upload_orphan_grace_s: float = 3600.0
    # fault injection for tests: wait this long between committing a new job and publishing it
    pause_after_commit_s: float = 0.0
    limits: Limits = Field(default_factory=Limits)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    evaluations: EvaluationSettings = Field(default_factory=EvaluationSettings)
    default_tenant: str = "default"
    # requests without a key act as ``default_tenant`` with every scope: the local mode that
    # ``glmft up`` turns on when it binds to loopback; off, every request needs a key
    allow_anonymous: bool = False
    # {api key: tenant} or {api key: {"tenant", "scopes"}}, beside the keys kept in SQL
    api_keys: dict[str, str | EnvApiKey] = Field(default_factory=dict)
    key_touch_interval_s: float = 60.0  # a key's last_used_at is written at most this often
    # threads of each API process that run the blocking parts of requests (SQL, files); its
    # SQL pool holds as many connections, so no thread waits for one
    api_threads: int = Field(default=16, ge=1)
    # how old the snapshot of a tenant's queue that an API process counts queue positions in
    # may be (api.queue_positions); 0 counts them in SQL on every request
    queue_position_max_age_s: float = Field(default=1.0, ge=0)
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)

    @field_validator("models", mode="before")
    @classmethod
    def _dashed_names(cls, value: object) -> object:
        """Registry names use ``-``; ``_`` reads as ``-`` (shell variable names lack ``-``)."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {}
        for name, entry in value.items():
            key = str(name).replace("_", "-")
            both = isinstance(entry, dict) and isinstance(merged.get(key), dict)
            # GLMFT_MODELS__a-b__PATH and GLMFT_MODELS__a_b__GPUS describe one entry
            merged[key] = {**merged[key], **entry} if both else entry
        return merged

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'glmft.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home / 'broker.db'}"

    @property
    def private_webhook_targets(self) -> bool:
        """Whether webhooks may target loopback and private addresses."""
        allowed = self.webhooks.allow_private_targets
        return self.allow_anonymous if allowed is None else allowed

    @property
    def artifacts(self) -> Path:
        return self.artifact_root or self.home / "artifacts"

    @property
    def feature_cache(self) -> Path:
        """Pre-tokenised datasets the trainer reuses across jobs (trainer.datacache)."""
        return self.artifacts / "feature-cache"

    @property
    def compile_cache(self) -> Path:
        """torch.compile's kernels, reused across jobs (``compile: true``, trainer.compile)."""
        return self.artifacts / "compile-cache"


@lru_cache
def get_settings() -> Settings:
    return Settings()
