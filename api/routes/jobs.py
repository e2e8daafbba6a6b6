"""``/jobs``: check, create (idempotent), list, read, cancel, pause, resume."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response

from api.deps import (
    EnqueuerDep,
    JobDep,
    JobIdPath,
    QueuePositionsDep,
    SessionDep,
    SettingsDep,
    TenantDep,
)
from api.responses import model_response
from api.schemas.common import Page, error_responses
from api.schemas.jobs import JobCheck, JobCheckRequest, JobCreate, JobPublic, ResumeRequest
from api.services import job_actions, jobs
from api.services.job_queries import (
    job_public,
    latest_metrics,
    list_jobs,
    queue_position,
    read_job,
)
from core.jobs import JobState

router = APIRouter(prefix="/jobs", tags=["jobs"])
METADATA_PREFIX = "metadata."

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Same key + same body → the same job (200); same key + other body → 409.",
    ),
]


@router.post(
    "",
    status_code=201,
    response_model=JobPublic,
    responses={
        200: {"model": JobPublic, "description": "Replay: the job this Idempotency-Key created."},
        **error_responses(404, 409, 429, 503),
    },
)
def create_job(
    job_in: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    enqueuer: EnqueuerDep,
    positions: QueuePositionsDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Validate a fine-tuning job, store it as queued and hand it to the workers."""
    job, created = jobs.create_job(
        session=session,
        settings=settings,
        enqueuer=enqueuer,
        tenant=tenant,
        job_in=job_in,
        idempotency_key=idempotency_key,
    )
    view = job_public(job, queue_position=positions.position(session, job))
    session.close()  # here, in this thread: the connection goes back with its round trip
    return model_response(view, 201 if created else 200)


@router.post("/check", response_model=JobCheck, responses=error_responses(404))
def check_job(body: JobCheckRequest, session: SessionDep, settings: SettingsDep) -> JobCheck:
    """What POST /jobs would make of a job (model, config, GPUs); nothing is stored or queued."""
    return jobs.check_job(session=session, settings=settings, spec=body)


@router.get("", response_model=Page[JobPublic], responses=error_responses())
def get_jobs(
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    state: Annotated[list[JobState] | None, Query(description="Repeat to match any.")] = None,
    model: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> Page[JobPublic]:
    """Your jobs, newest first; filter metadata with `metadata.<key>=<value>` parameters."""
    metadata = {
        key[len(METADATA_PREFIX) :]: value
        for key, value in request.query_params.items()
        if key.startswith(METADATA_PREFIX)
    }
    rows, has_more, cursor = list_jobs(
        session=session,
        tenant=tenant,
        states=[s.value for s in state or []],
        model=model,
        metadata=metadata,
        after=after,
        limit=limit,
    )
    return Page(data=[job_public(j) for j in rows], has_more=has_more, next_cursor=cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=error_responses(404))
def get_job(
    job_id: JobIdPath, session: SessionDep, tenant: TenantDep, positions: QueuePositionsDep
) -> Response:
    """A job with its queue position, progress, latest metrics and error."""
    job = read_job(session, job_id, tenant)
    view = job_public(
        job,
        queue_position=positions.position(session, job),
        latest_metrics=latest_metrics(session, job.id),
    )
    session.close()  # here, in this thread: the connection goes back with its round trip
    return model_response(view)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=error_responses(404, 409))
def cancel_job(job: JobDep, session: SessionDep) -> JobPublic:
    """Cancel a job: queued → cancelled at once, running → cancelling (the worker stops it)."""
    return job_public(job_actions.cancel_job(session=session, job=job))


@router.post("/{job_id}/pause", response_model=JobPublic, responses=error_responses(404, 409))
def pause_job(job: JobDep, session: SessionDep) -> JobPublic:
    """Pause a job: a queued one is held back; a running one's trainer is stopped, keeping its
    checkpoints. POST /jobs/{id}/resume continues from the newest checkpoint."""
    return job_public(job_actions.pause_job(session=session, job=job))


@router.post(
    "/{job_id}/resume", response_model=JobPublic, responses=error_responses(404, 409, 429, 503)
)
def resume_job(
    job: JobDep,
    session: SessionDep,
    settings: SettingsDep,
    enqueuer: EnqueuerDep,
    body: Annotated[ResumeRequest | None, Body()] = None,
) -> JobPublic:
    """Queue a failed, cancelled or paused job again, from a checkpoint (default: the newest)."""
    resumed = job_actions.resume_job(
        session=session,
        settings=settings,
        enqueuer=enqueuer,
        job=job,
        step=body.checkpoint_step if body else None,
    )
    return job_public(resumed, queue_position=queue_position(session, resumed))
