"""The API bench's baseline: the least a FastAPI app does to answer the same two requests.

``GET /jobs/{id}`` reads one row of the same ``jobs`` table and returns it as JSON;
``POST /jobs`` validates the same body with a small pydantic model, inserts one queued row and
returns it. No auth, no quotas, no config resolution, no broker, no middleware, no metrics:
the floor that FastAPI, the server and the SQL driver set on this machine, so the bench can say
how far above it the real API is.

Run the way the bench runs the API: ``uvicorn --factory bench.minimal_app:create_app`` with
``GLMFT_DATABASE_URL`` naming the store (already migrated).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import create_engine, text

_COLUMNS = (
    "id, tenant_id, state, model, method, training_dataset_id, config, gpus, priority, "
    "user_metadata, created_at"
)


class JobIn(BaseModel):
    model: str
    method: str = "lora"
    training_dataset: str
    config: str | None = None
    gpus: int | None = Field(default=None, ge=0)
    overrides: dict[str, Any] = {}


def create_app() -> FastAPI:
    url = os.environ["GLMFT_DATABASE_URL"]
    engine = (
        create_engine(url, connect_args={"check_same_thread": False})
        if url.startswith("sqlite")
        else create_engine(url)
    )
    app = FastAPI(title="minimal")
    select_one = text(f"SELECT {_COLUMNS} FROM jobs WHERE id = :id")  # noqa: S608 - constant
    insert_one = text(
        "INSERT INTO jobs (id, tenant_id, state, model, method, training_dataset_id, config, "
        "gpus, priority, user_metadata, attempt, max_attempts, gpu_ids, step, events_offset, "
        "cancel_requested, created_at) VALUES (:id, 'default', 'queued', :model, :method, "
        ":dataset, '{}', :gpus, 0, '{}', 0, 3, '[]', 0, 0, false, :now)"
    )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        with engine.connect() as conn:
            row = conn.execute(select_one, {"id": job_id}).mappings().first()
        if row is None:
            raise HTTPException(404, "not found")
        return dict(row)

    @app.post("/jobs", status_code=201)
    def create_job(job_in: JobIn) -> dict[str, Any]:
        job_id = f"job-{uuid.uuid4().hex[:24]}"
        values = {
            "id": job_id,
            "model": job_in.model,
            "method": job_in.method,
            "dataset": job_in.training_dataset,
            "gpus": job_in.gpus or 0,
            "now": dt.datetime.now(dt.UTC),
        }
        with engine.begin() as conn:
            conn.execute(insert_one, values)
            row = conn.execute(select_one, {"id": job_id}).mappings().one()
        return dict(row)

    return app
