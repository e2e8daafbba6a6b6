"""``/adapters``: the adapters you can chat with, their place in this process's chat engine
(load, pin, unload), and promoting any checkpoint of a job to an adapter."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api.deps import JobDep, SessionDep, TenantDep
from api.routes.chat import chat_service
from api.schemas.chat import AdapterPublic, LoadAdapterRequest
from api.schemas.common import ListOf, error_responses
from api.services.adapters import find_checkpoint, promote, visible_adapters
from api.services.chat import ChatService
from core.errors import AdapterBusy, AdapterNotFound, ChatCapacity
from core.models import Adapter, Job
from serving.errors import AdapterBusyError, AdapterCacheFullError
from trainer.config_rules import INT_MAX

router = APIRouter(tags=["adapters"])
AdapterIdPath = Annotated[
    str,
    Path(
        description="The adapter id.",
        examples=["ft:glm-4-9b-chat:lora:job-3f2a9c0d1e4b5a6f7c8d9e0f"],
    ),
]


def _public(service: ChatService, adapter: Adapter) -> AdapterPublic:
    loaded, pinned = service.state_of(adapter.id, adapter.base_model, adapter.method, adapter.path)
    return AdapterPublic(
        id=adapter.id,
        base_model=adapter.base_model,
        method=adapter.method,
        job_id=adapter.job_id,
        step=adapter.step,
        created_at=adapter.created_at,
        loaded=loaded,
        pinned=pinned,
    )


def _adapter(session: Session, tenant: str, adapter_id: str) -> Adapter:
    adapter = session.get(Adapter, adapter_id)
    if adapter is None or adapter.tenant_id != tenant:
        raise AdapterNotFound(f"adapter {adapter_id} not found", param="adapter_id")
    return adapter


@router.get("/adapters", response_model=ListOf[AdapterPublic], responses=error_responses())
def list_adapters(
    request: Request, session: SessionDep, tenant: TenantDep
) -> ListOf[AdapterPublic]:
    """Your adapters, newest first: those of succeeded jobs and promoted checkpoints."""
    service = chat_service(request)
    return ListOf(data=[_public(service, a) for a in visible_adapters(session, tenant)])


@router.get("/adapters/{adapter_id}", response_model=AdapterPublic, responses=error_responses(404))
def get_adapter(
    adapter_id: AdapterIdPath, request: Request, session: SessionDep, tenant: TenantDep
) -> AdapterPublic:
    return _public(chat_service(request), _adapter(session, tenant, adapter_id))


@router.delete("/adapters/{adapter_id}", status_code=204, responses=error_responses(404, 409))
async def delete_adapter(
    adapter_id: AdapterIdPath, request: Request, session: SessionDep, tenant: TenantDep
) -> Response:
    """Unload it and forget it; the job's checkpoint files stay (promote one again at will)."""
    adapter = await run_in_threadpool(_adapter, session, tenant, adapter_id)
    await _unload(chat_service(request), adapter)

    def forget() -> None:
        job = session.get(Job, adapter.job_id) if adapter.job_id else None
        if job is not None and job.adapter_id == adapter.id:
            job.adapter_id = None
            session.add(job)
        session.delete(adapter)
        session.commit()

    await run_in_threadpool(forget)
    return Response(status_code=204)


@router.post(
    "/adapters/{adapter_id}/load",
    response_model=AdapterPublic,
    responses=error_responses(404, 409, 503),
)
async def load_adapter(
    adapter_id: AdapterIdPath,
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    body: LoadAdapterRequest | None = None,
) -> AdapterPublic:
    """Load it now (and its base model when needed) rather than on the first chat; ``pin``
    keeps it loaded until it is unloaded."""
    service = chat_service(request)
    adapter = await run_in_threadpool(_adapter, session, tenant, adapter_id)
    target = await run_in_threadpool(service.resolve, session, tenant, adapter.id)
    engine = await service.engine(target)
    if target.adapter is not None:
        try:
            await asyncio.wrap_future(engine.load(target.adapter, pin=bool(body and body.pin)))
        except AdapterCacheFullError as exc:
            raise ChatCapacity(str(exc)) from exc
    return _public(service, adapter)


@router.post(
    "/adapters/{adapter_id}/unload",
    response_model=AdapterPublic,
    responses=error_responses(404, 409),
)
async def unload_adapter(
    adapter_id: AdapterIdPath, request: Request, session: SessionDep, tenant: TenantDep
) -> AdapterPublic:
    """Free its memory (pinned or not); the next chat with it loads it again."""
    service = chat_service(request)
    adapter = await run_in_threadpool(_adapter, session, tenant, adapter_id)
    await _unload(service, adapter)
    return _public(service, adapter)


async def _unload(service: ChatService, adapter: Adapter) -> None:
    try:
        await service.unload(adapter.id, adapter.base_model, adapter.method, adapter.path)
    except AdapterBusyError as exc:
        raise AdapterBusy(str(exc)) from exc


@router.post(
    "/jobs/{job_id}/checkpoints/{step}/promote",
    response_model=AdapterPublic,
    status_code=201,
    tags=["jobs"],
    responses=error_responses(404),
)
def promote_checkpoint(
    job: JobDep,
    step: Annotated[int, Path(ge=0, le=INT_MAX, description="The checkpoint's step.")],
    request: Request,
    session: SessionDep,
) -> AdapterPublic:
    """Make the checkpoint at ``step`` an adapter of its own (the same one when repeated)."""
    checkpoint = find_checkpoint(session, job, step, param="step")
    return _public(chat_service(request), promote(session, job, checkpoint))
