"""OpenAI-compatible fine-tuning: ``/v1/files`` and ``/v1/fine_tuning/jobs``, so the official
``openai`` package (``base_url=".../v1"``) uploads datasets and runs glmft jobs.

The routes map onto the native services and answer errors in OpenAI's shape
(:class:`api.openai_errors.OpenAIRoute`). glmft's method, config, overrides and GPUs travel in
an extra ``glmft`` object (``extra_body={"glmft": {...}}``).
"""

from __future__ import annotations

import shutil
from typing import Annotated, Protocol, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api.deps import EngineDep, EnqueuerDep, JobDep, SessionDep, SettingsDep, TenantDep
from api.openai_errors import OPENAI_ERROR_RESPONSES, OpenAIRoute
from api.routes.jobs import IdempotencyKey
from api.schemas.openai_finetuning import (
    FileDeleted,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    OpenAIList,
)
from api.services import datasets as dataset_service
from api.services import job_actions, jobs
from api.services import openai_finetuning as mapping
from api.services.job_queries import list_jobs
from api.uploads import receive_upload
from core.errors import AppError, DatasetNotFound, Invalid
from core.models import Dataset, Job, new_id

router = APIRouter(
    prefix="/v1",
    tags=["openai-compatible"],
    route_class=OpenAIRoute,
    responses=OPENAI_ERROR_RESPONSES,
)
PURPOSE = "fine-tune"
Limit = Annotated[int, Query(ge=1, le=100)]
After = Annotated[str | None, Query(description="The last `id` of the previous page.")]
FileId = Annotated[str, PathParam(description="A file (dataset) id.", examples=["ds-9c1f0e2d"])]


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


Item = TypeVar("Item", bound=_HasId)


def _page(items: list[Item], has_more: bool) -> OpenAIList[Item]:
    first, last = (items[0].id, items[-1].id) if items else (None, None)
    return OpenAIList(data=items, has_more=has_more, first_id=first, last_id=last)


def _file(session: Session, tenant: str, file_id: str) -> Dataset:
    try:
        return dataset_service.get_dataset(session, tenant, file_id)
    except DatasetNotFound as exc:
        raise DatasetNotFound(f"file {file_id} not found", param="file_id") from exc


@router.post("/files", response_model=FileObject)
async def create_file(
    request: Request, settings: SettingsDep, tenant: TenantDep, engine: EngineDep
) -> FileObject:
    """Upload a fine-tuning file (purpose `fine-tune`); it is validated like POST /datasets."""
    dataset_id = new_id("ds")
    directory = dataset_service.dataset_dir(settings.artifacts, tenant, dataset_id)
    upload = await receive_upload(request, directory, settings.limits.max_upload_bytes)
    try:
        purpose = upload.fields.get("purpose")
        if purpose != PURPOSE:
            raise Invalid(
                f"purpose must be {PURPOSE!r} (got {purpose!r}): glmft stores fine-tuning "
                "files only",
                param="purpose",
            )
        dataset = await run_in_threadpool(
            dataset_service.store_upload,
            engine=engine,
            settings=settings,
            tenant=tenant,
            dataset_id=dataset_id,
            upload=upload,
        )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return mapping.file_object(dataset)


@router.get("/files", response_model=OpenAIList[FileObject])
def list_files(
    session: SessionDep,
    tenant: TenantDep,
    purpose: Annotated[str | None, Query()] = None,
    after: After = None,
    limit: Limit = 100,
) -> OpenAIList[FileObject]:
    """Your files, newest first."""
    if purpose not in (None, PURPOSE):
        return _page([], False)
    cursor = mapping.cursor_after(session, "file", tenant, after)
    rows, has_more, _ = dataset_service.list_datasets(
        session=session, tenant=tenant, after=cursor, limit=limit
    )
    return _page([mapping.file_object(d) for d in rows], has_more)


@router.get("/files/{file_id}", response_model=FileObject)
def retrieve_file(file_id: FileId, session: SessionDep, tenant: TenantDep) -> FileObject:
    """One file."""
    return mapping.file_object(_file(session, tenant, file_id))


@router.get(
    "/files/{file_id}/content",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file."}},
)
def retrieve_file_content(file_id: FileId, session: SessionDep, tenant: TenantDep) -> FileResponse:
    """The file's bytes, as uploaded."""
    dataset = _file(session, tenant, file_id)
    return FileResponse(
        dataset.path, media_type="application/octet-stream", filename=dataset.filename
    )


@router.delete("/files/{file_id}", response_model=FileDeleted)
def delete_file(file_id: FileId, session: SessionDep, tenant: TenantDep) -> FileDeleted:
    """Delete a file (409 while a job that has not succeeded uses it)."""
    dataset_service.delete_dataset(session=session, dataset=_file(session, tenant, file_id))
    return FileDeleted(id=file_id)


@router.post("/fine_tuning/jobs", response_model=FineTuningJob)
def create_fine_tuning_job(
    body: FineTuningJobCreate,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    enqueuer: EnqueuerDep,
    idempotency_key: IdempotencyKey = None,
) -> FineTuningJob:
    """Create a fine-tuning job from uploaded files (POST /jobs underneath)."""
    if body.glmft.gpus is None:  # resolved here: OpenAI's batch_size is per job, glmft's per GPU
        body.glmft.gpus = jobs.default_gpus(session, settings, body.model)
    try:
        job, _ = jobs.create_job(
            session=session,
            settings=settings,
            enqueuer=enqueuer,
            tenant=tenant,
            job_in=mapping.job_create(body),
            idempotency_key=idempotency_key,
        )
    except AppError as exc:
        raise mapping.renamed(exc) from None
    return mapping.fine_tuning_job(job)


@router.get("/fine_tuning/jobs", response_model=OpenAIList[FineTuningJob])
def list_fine_tuning_jobs(
    request: Request, session: SessionDep, tenant: TenantDep, after: After = None, limit: Limit = 20
) -> OpenAIList[FineTuningJob]:
    """Your jobs, newest first; filter with `metadata[key]=value`."""
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    rows, has_more, _ = list_jobs(
        session=session,
        tenant=tenant,
        states=[],
        model=None,
        metadata=metadata,
        after=mapping.cursor_after(session, "job", tenant, after),
        limit=limit,
    )
    tokens = mapping.trained_tokens(session, [j.id for j in rows])
    return _page([mapping.fine_tuning_job(j, tokens.get(j.id)) for j in rows], has_more)


def _job(session: Session, job: Job) -> FineTuningJob:
    return mapping.fine_tuning_job(job, mapping.trained_tokens(session, [job.id]).get(job.id))


@router.get("/fine_tuning/jobs/{job_id}", response_model=FineTuningJob)
def retrieve_fine_tuning_job(job: JobDep, session: SessionDep) -> FineTuningJob:
    """One job."""
    return _job(session, job)


@router.post("/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJob)
def cancel_fine_tuning_job(job: JobDep, session: SessionDep) -> FineTuningJob:
    """Cancel a job: `cancelled` at once (a running one's worker stops its trainer within
    seconds; `glmft.state` is `cancelling` until then)."""
    return _job(session, job_actions.cancel_job(session=session, job=job))


@router.post("/fine_tuning/jobs/{job_id}/pause", response_model=FineTuningJob)
def pause_fine_tuning_job(job: JobDep, session: SessionDep) -> FineTuningJob:
    """Pause a job: its trainer stops, keeping its checkpoints (POST /jobs/{id}/pause)."""
    return _job(session, job_actions.pause_job(session=session, job=job))


@router.post("/fine_tuning/jobs/{job_id}/resume", response_model=FineTuningJob)
def resume_fine_tuning_job(
    job: JobDep, session: SessionDep, settings: SettingsDep, enqueuer: EnqueuerDep
) -> FineTuningJob:
    """Resume a paused (or failed, cancelled) job from its newest checkpoint."""
    resumed = job_actions.resume_job(
        session=session, settings=settings, enqueuer=enqueuer, job=job, step=None
    )
    return _job(session, resumed)


@router.get("/fine_tuning/jobs/{job_id}/events", response_model=OpenAIList[FineTuningJobEvent])
def list_fine_tuning_events(
    job: JobDep, session: SessionDep, after: After = None, limit: Limit = 20
) -> OpenAIList[FineTuningJobEvent]:
    """The job's events, newest first."""
    events, has_more = mapping.list_events(session, job, after=after, limit=limit)
    return _page(events, has_more)


@router.get(
    "/fine_tuning/jobs/{job_id}/checkpoints", response_model=OpenAIList[FineTuningJobCheckpoint]
)
def list_fine_tuning_checkpoints(
    job: JobDep, session: SessionDep, after: After = None, limit: Limit = 10
) -> OpenAIList[FineTuningJobCheckpoint]:
    """The job's checkpoints, newest first."""
    checkpoints, has_more = mapping.list_checkpoints(session, job, after=after, limit=limit)
    return _page(checkpoints, has_more)
