"""Request dependencies: settings, a SQL session, the caller (key, tenant, scopes), the
enqueuer, a job.

Auth is resolved in one place, :func:`get_principal`; :func:`get_tenant` adds the scope check
every tenant route gets from its method (GET: ``read``, else ``write``), and
:func:`require_admin` guards the admin routes (keys, tenants, every tenant's metrics).

The dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in
the thread pool, a hop that costs more CPU than the dependency itself. The caller's key is
looked up in SQL (in a thread) only when :class:`api.key_cache.KeyCache` does not hold it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api.key_cache import KeyCache
from api.queue import Enqueuer
from api.queue_positions import QueuePositions
from core.errors import Forbidden, JobNotFound, Unauthorized
from core.keys import SCOPES, Principal, authenticate
from core.models import Job
from core.settings import Settings


async def get_settings(request: Request) -> Settings:
    """The app's settings (``create_app``'s)."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]
_bearer = HTTPBearer(
    auto_error=False, description="An API key (`sk-glmft-...`, or one of `GLMFT_API_KEYS`)."
)


async def get_engine(request: Request) -> Engine:
    """The app's SQL engine (created on startup)."""
    engine: Engine = request.app.state.engine
    return engine


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request; objects stay readable after commit. Opening it does no I/O;
    closing one that still holds a connection (a transaction is open) returns it to the pool
    with a rollback, a round trip, so that happens in a thread."""
    session = Session(request.app.state.engine, expire_on_commit=False)
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


def _lookup(engine: Engine, settings: Settings, presented: str) -> Principal | None:
    with Session(engine, expire_on_commit=False) as session:
        return authenticate(session, settings, presented)


async def get_principal(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Who calls: the tenant and scopes of the key presented (``GLMFT_API_KEYS`` or SQL), or in
    the local mode (``allow_anonymous``) a caller without a known key as the default tenant
    with every scope. Raises ``Unauthorized`` (401)."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    found = None
    if credentials is not None:
        presented = credentials.credentials
        cache: KeyCache = request.app.state.key_cache
        found = cache.get(presented)
        if found is None:
            found = await run_in_threadpool(_lookup, request.app.state.engine, settings, presented)
            if found is not None:
                cache.put(presented, found)
    if found is not None:
        principal = found
    elif settings.allow_anonymous:  # an unknown key too: clients that must send one (openai)
        principal = Principal(settings.default_tenant, frozenset(SCOPES))
    elif credentials is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    else:
        raise Unauthorized("unknown API key (or a revoked one)")
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def required_scope(method: str) -> str:
    """``read`` for GET and HEAD, ``write`` for everything that changes something."""
    return "read" if method in ("GET", "HEAD", "OPTIONS") else "write"


async def get_tenant(request: Request, principal: PrincipalDep) -> str:
    """The caller's tenant id (ARCHITECTURE.md decision 10), once the key has the scope the
    route's method needs (``required_scope``); raises ``Forbidden`` (403)."""
    scope = required_scope(request.method)
    if not principal.allows(scope):
        raise Forbidden(
            f"this API key lacks the {scope!r} scope",
            details={"required": scope, "scopes": sorted(principal.scopes)},
        )
    return principal.tenant


async def require_admin(principal: PrincipalDep) -> Principal:
    """The caller, if its key has the ``admin`` scope; raises ``Forbidden`` (403)."""
    if not principal.allows("admin"):
        raise Forbidden(
            "this route needs an API key with the 'admin' scope",
            details={"required": "admin", "scopes": sorted(principal.scopes)},
        )
    return principal


async def get_enqueuer(request: Request) -> Enqueuer:
    """The app's :class:`api.queue.Enqueuer`."""
    enqueuer: Enqueuer = request.app.state.enqueuer
    return enqueuer


async def get_queue_positions(request: Request) -> QueuePositions:
    """The app's :class:`api.queue_positions.QueuePositions`."""
    positions: QueuePositions = request.app.state.queue_positions
    return positions


EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
TenantDep = Annotated[str, Depends(get_tenant)]
EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]
QueuePositionsDep = Annotated[QueuePositions, Depends(get_queue_positions)]
AdminDep = Annotated[Principal, Depends(require_admin)]
JobIdPath = Annotated[
    str, Path(description="The job id.", examples=["job-3f2a9c0d1e4b5a6f7c8d9e0f"])
]


def find_job(session: Session, job_id: str, tenant: str) -> Job:
    """The caller's job ``job_id``; another tenant's job is reported as not found."""
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant:
        raise JobNotFound(f"job {job_id} not found", param="job_id")
    return job


def get_job(job_id: JobIdPath, session: SessionDep, tenant: TenantDep) -> Job:
    """The caller's job ``job_id`` (:func:`find_job`)."""
    return find_job(session, job_id, tenant)


JobDep = Annotated[Job, Depends(get_job)]
