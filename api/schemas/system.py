"""Schemas of the model registry and the health probes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.common import UtcDatetime


class ModelPublic(BaseModel):
    """A base model of the registry, or a fine-tuned adapter over one."""

    id: str = Field(examples=["glm-4-9b-chat-hf", "ft:glm-4-9b-chat-hf:support-bot:job-3f2a"])
    object: Literal["model"] = "model"
    kind: Literal["base", "adapter"]
    base_model: str = Field(description="The registry name (equal to `id` for a base).")
    description: str = ""
    method: str | None = None
    job_id: str | None = None
    step: int | None = None
    created_at: UtcDatetime


class Health(BaseModel):
    """Liveness or readiness, with each dependency's check."""

    status: Literal["ok", "ready"]
    checks: dict[str, str] = Field(default_factory=dict, examples=[{"database": "ok"}])
