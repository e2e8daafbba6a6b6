"""``POST /chat`` and the adapter routes: what they take and return."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import UtcDatetime


class CheckpointRef(BaseModel):
    """One checkpoint of a job, served without promoting it to an adapter."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(description="The job id.", examples=["job-3f2a9c0d1e4b5a6f7c8d9e0f"])
    checkpoint: int = Field(
        ge=0, le=2**31 - 1, description="The checkpoint's step.", examples=[500]
    )


class GenerationFields(BaseModel):
    """Sampling parameters; the defaults are the upstream GLM-4 inference defaults."""

    max_new_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens to generate; by default 1024, or what the context has left.",
    )
    temperature: float = Field(default=0.8, ge=0, le=2, description="0 decodes greedily.")
    top_p: float = Field(default=0.8, gt=0, le=1)
    repetition_penalty: float = Field(default=1.2, gt=0, le=10)
    stop: list[str] | str | None = Field(
        default=None, description="Text that ends the answer (not included)."
    )
    seed: int | None = Field(
        default=None, ge=-(2**63), le=2**64 - 1, description="Makes sampling reproducible."
    )


class ChatRequest(GenerationFields):
    """A chat turn for a base model, an adapter, or one checkpoint of a job."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "ft:glm-4-9b-chat:lora:job-3f2a9c0d1e4b5a6f7c8d9e0f",
                    "messages": [{"role": "user", "content": "类型#裙*颜色#红色"}],
                    "temperature": 0,
                }
            ]
        },
    )

    model: str | CheckpointRef = Field(
        description="A base model name, an adapter id, or {job, checkpoint}."
    )
    messages: list[dict[str, Any]] = Field(
        description="GLM-4 conversation messages (system/user/assistant/observation), ending "
        "with a user or observation message; a system message may carry `tools`.",
        min_length=1,
    )
    tools: list[dict[str, Any]] | None = Field(
        default=None,
        description="Tools to offer (OpenAI-style function specs); added to the system message.",
    )
    stream: bool = Field(
        default=False, description="Server-Sent Events: `delta` frames, then one `done` frame."
    )


class ToolCallOut(BaseModel):
    name: str
    arguments: dict[str, Any]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    tool_call: ToolCallOut | None = Field(
        default=None, description="Set when the model called one of the offered tools."
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timings(BaseModel):
    queue_ms: float = Field(description="Waiting for a batch (and the model/adapter to load).")
    prefill_ms: float = Field(description="From the batch's start to the first token.")
    total_ms: float
    tokens_per_second: float = Field(description="Output tokens per second after the first.")


class ChatResponse(BaseModel):
    id: str
    model: str
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_call"]
    usage: Usage
    timings: Timings


class AdapterPublic(BaseModel):
    id: str
    base_model: str
    method: str
    job_id: str | None
    step: int | None
    created_at: UtcDatetime
    loaded: bool = Field(description="In the chat engine's memory in this process now.")
    pinned: bool = Field(description="Kept loaded: never evicted to make room.")


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pin: bool = Field(default=False, description="Keep it loaded until unloaded.")
