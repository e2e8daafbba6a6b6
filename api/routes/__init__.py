"""All routes, native paths as issue 3 names them (no ``/v1`` prefix)."""

from __future__ import annotations

from fastapi import APIRouter

from api.routes import datasets, health, job_outputs, jobs, models

api_router = APIRouter()
for module in (health, datasets, jobs, job_outputs, models):
    api_router.include_router(module.router)
