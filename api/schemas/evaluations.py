"""Evaluation schemas: the create request, the public evaluation (models' metrics side by
side), its samples (every model's output next to the reference) and its events."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from api.schemas.chat import CheckpointRef
from api.schemas.common import UtcDatetime

MAX_MODELS = 8
DEFAULT_MAX_NEW_TOKENS = 128

_CREATE_EXAMPLE: JsonDict = {
    "models": [
        "glm-4-9b-chat",
        "ft:glm-4-9b-chat:support-bot:job-3f2a9c0d1e4b5a6f7c8d9e0f",
        {"job": "job-3f2a9c0d1e4b5a6f7c8d9e0f", "checkpoint": 500},
    ],
    "dataset": "ds-0a9b8c7d6e5f4a3b2c1d0e9f",
    "max_new_tokens": 128,
    "limit": 200,
    "name": "support-bot nightly",
}


class EvaluationCreate(BaseModel):
    """Run a dataset's prompts through every model and score the answers (ROUGE-1/2/L, BLEU-4).

    Each conversation's last assistant message is the reference and every message before it
    the prompt; conversations that do not end with an assistant reply are skipped and counted.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_CREATE_EXAMPLE]})

    models: list[str | CheckpointRef] = Field(
        min_length=1,
        max_length=MAX_MODELS,
        description="Base model names, adapter ids or {job, checkpoint}, compared side by side.",
    )
    dataset: str = Field(description="Id of a valid dataset of yours (GLM-4 conversations).")
    max_new_tokens: int = Field(
        default=DEFAULT_MAX_NEW_TOKENS,
        ge=1,
        description="Most tokens per answer (at most the server's GLMFT_CHAT__MAX_NEW_TOKENS).",
    )
    limit: int | None = Field(
        default=None, ge=1, description="Evaluate only the dataset's first N conversations."
    )
    temperature: float = Field(default=0, ge=0, le=2, description="0 (the default) is greedy.")
    top_p: float = Field(default=0.8, gt=0, le=1)
    repetition_penalty: float = Field(default=1.2, gt=0, le=10)
    seed: int | None = Field(default=None, description="Makes sampling reproducible.")
    name: str | None = Field(default=None, max_length=200)


class EvaluationProgress(BaseModel):
    done: int = Field(description="Answers stored.")
    total: int = Field(description="Answers to generate: samples x models.")


class EvaluationError(BaseModel):
    """Why an evaluation failed."""

    code: str
    message: str
    param: str | None = None


class EvaluationPublic(BaseModel):
    """An evaluation; ``metrics`` holds each finished model's scores, side by side."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "eval-5b7c9d1e3f5a7b9c1d3e5f7a",
                    "object": "evaluation",
                    "state": "succeeded",
                    "models": ["glm-4-9b-chat", "ft:glm-4-9b-chat:support-bot:job-3f2a"],
                    "dataset": "ds-0a9b8c7d6e5f4a3b2c1d0e9f",
                    "samples": 200,
                    "skipped": 0,
                    "progress": {"done": 400, "total": 400},
                    "metrics": {
                        "glm-4-9b-chat": {
                            "rouge-1": 21.4,
                            "rouge-2": 4.9,
                            "rouge-l": 15.2,
                            "bleu-4": 0.041,
                        },
                        "ft:glm-4-9b-chat:support-bot:job-3f2a": {
                            "rouge-1": 33.0,
                            "rouge-2": 9.8,
                            "rouge-l": 25.6,
                            "bleu-4": 0.087,
                        },
                    },
                    "created_at": "2026-12-06T04:10:00Z",
                }
            ]
        }
    )

    id: str
    object: Literal["evaluation"] = "evaluation"
    name: str | None = None
    state: str = Field(description="queued | running | succeeded | failed | cancelled")
    models: list[str] = Field(description="The models' names, in the order they were given.")
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
    metrics: dict[str, dict[str, float]] = Field(
        description="{model: {rouge-1, rouge-2, rouge-l, bleu-4}} for each finished model: "
        "ROUGE F x 100 and BLEU-4 (0-1) averaged over the samples, as the upstream demo scores."
    )
    error: EvaluationError | None = None
    created_at: UtcDatetime
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None


class SampleOutput(BaseModel):
    """One model's answer to a sample."""

    text: str
    finish_reason: str = Field(description="stop | length")
    completion_tokens: int
    scores: dict[str, float] = Field(description="This answer's rouge-1/2/l and bleu-4.")


class EvaluationSamplePublic(BaseModel):
    """A prompt, its reference and the answer of every model that has answered it."""

    index: int = Field(description="The conversation's 0-based position in the dataset.")
    line: int | None = Field(default=None, description="Its line in a JSONL dataset.")
    messages: list[dict[str, Any]] = Field(description="The prompt.")
    reference: str
    outputs: dict[str, SampleOutput] = Field(description="{model: output}.")


class EvaluationEventPublic(BaseModel):
    """One event of an evaluation (created, started, progress, model_finished, succeeded, ...)."""

    id: int
    evaluation_id: str
    kind: str
    message: str
    data: dict[str, Any]
    created_at: UtcDatetime
