"""Request dependencies: settings, a SQL session, the caller's tenant, the enqueuer, a job."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator, Mapping
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session

from api.queue import Enqueuer
from core.errors import JobNotFound, Unauthorized
from core.models import Job
from core.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]
_bearer = HTTPBearer(auto_error=False, description="An API key (only when keys are configured).")
_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def get_engine(request: Request) -> Engine:
    """The app's SQL engine (created on startup)."""
    engine: Engine = request.app.state.engine
    return engine


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; objects stay readable after commit."""
    with Session(get_engine(request), expire_on_commit=False) as session:
        yield session


def api_keys(settings: Settings) -> Mapping[str, str]:
    """``{api key: tenant}``; empty means auth is off (every caller is the default tenant)."""
    return settings.api_keys


def get_tenant(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's tenant id (ARCHITECTURE.md decision 10)."""
    keys = api_keys(settings)
    if not keys:
        return settings.default_tenant
    if credentials is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    for key, tenant in keys.items():  # compare_digest: no timing hint about which prefix matched
        if hmac.compare_digest(key.encode(), credentials.credentials.encode()):
            if not _TENANT.match(tenant):
                raise ValueError(f"tenant id {tenant!r} is not a safe path segment")
            return tenant
    raise Unauthorized("unknown API key")


def get_enqueuer(request: Request) -> Enqueuer:
    """The app's :class:`api.queue.Enqueuer`."""
    enqueuer: Enqueuer = request.app.state.enqueuer
    return enqueuer


EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
TenantDep = Annotated[str, Depends(get_tenant)]
EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]
JobIdPath = Annotated[
    str, Path(description="The job id.", examples=["job-3f2a9c0d1e4b5a6f7c8d9e0f"])
]


def get_job(job_id: JobIdPath, session: SessionDep, tenant: TenantDep) -> Job:
    """The caller's job ``job_id``; another tenant's job is reported as not found."""
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant:
        raise JobNotFound(f"job {job_id} not found", param="job_id")
    return job


JobDep = Annotated[Job, Depends(get_job)]
