"""Quota checks: a request that would pass one of its tenant's quotas is refused with 429
``quota_exceeded``, whose details say which quota, what is used and what is allowed.

Queued jobs and storage are checked at admission; a job asking for more GPUs than its tenant
may ever hold is refused at admission too. Running jobs and GPUs in use are enforced by the
fair claim (``core.scheduling``): a job over them waits in the queue. A checkpoint that would
pass the storage quota fails its job (``worker.storage_quota``).
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlmodel import Session

from core.errors import QuotaExceeded
from core.settings import Settings
from core.tenants import effective_quotas, queued_jobs, usage

_WHAT = {
    "max_running_jobs": "running jobs",
    "max_queued_jobs": "queued jobs",
    "max_gpus": "GPUs",
    "max_storage_bytes": "bytes of storage",
}


def quota_error(
    tenant: str, quota: str, *, used: int, allowed: int, requested: int, param: str | None = None
) -> QuotaExceeded:
    """The 429 for ``quota``: ``details`` = ``{quota, used, allowed, requested}``."""
    what = _WHAT[quota]
    return QuotaExceeded(
        f"tenant {tenant} uses {used:,} of its {allowed:,} {what} ({quota}); this request "
        f"needs {requested:,} more",
        param=param,
        details={"quota": quota, "used": used, "allowed": allowed, "requested": requested},
    )


def check_job_admission(
    session: Session, tenant: str, gpus: int, limits: Mapping[str, int | None]
) -> None:
    """A new queued job: under ``max_queued_jobs``, and ``gpus`` within ``max_gpus``, of the
    tenant's ``limits`` (``core.tenants.quota_limits``). Usage is counted only for a quota
    that is set (no limit: nothing to count)."""
    queued = limits["max_queued_jobs"]
    if queued is not None:
        waiting = queued_jobs(session, tenant)
        if waiting + 1 > queued:
            raise quota_error(tenant, "max_queued_jobs", used=waiting, allowed=queued, requested=1)
    max_gpus = limits["max_gpus"]
    if max_gpus is not None and gpus > max_gpus:  # it could never start
        raise quota_error(
            tenant,
            "max_gpus",
            used=usage(session, tenant)["max_gpus"],
            allowed=max_gpus,
            requested=gpus,
            param="gpus",
        )


def storage_left(session: Session, settings: Settings, tenant: str) -> int | None:
    """Bytes the tenant may still store (``None``: no limit; may be negative)."""
    allowed = effective_quotas(session, settings, tenant)["max_storage_bytes"]
    if allowed is None:
        return None
    return allowed - usage(session, tenant)["max_storage_bytes"]


def check_storage(
    session: Session, settings: Settings, tenant: str, adding: int, param: str | None = None
) -> None:
    """Refuse ``adding`` more bytes past ``max_storage_bytes``."""
    allowed = effective_quotas(session, settings, tenant)["max_storage_bytes"]
    if allowed is None:
        return
    used = usage(session, tenant)["max_storage_bytes"]
    if used + adding > allowed:
        raise quota_error(
            tenant, "max_storage_bytes", used=used, allowed=allowed, requested=adding, param=param
        )
