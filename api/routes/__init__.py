"""All routes: the native ones (no prefix) and the OpenAI-compatible ones under ``/v1``."""

from __future__ import annotations

from fastapi import APIRouter

from api.routes import (
    adapters,
    chat,
    datasets,
    evaluations,
    health,
    job_outputs,
    jobs,
    models,
    openai_chat,
    openai_finetuning,
)

api_router = APIRouter()
for module in (
    health,
    datasets,
    jobs,
    job_outputs,
    models,
    adapters,
    chat,
    evaluations,
    openai_chat,
    openai_finetuning,
):
    api_router.include_router(module.router)
