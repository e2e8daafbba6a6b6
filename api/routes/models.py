"""``/models``: the base models of the registry and your fine-tuned adapters."""

from __future__ import annotations

from fastapi import APIRouter
from sqlmodel import col, or_, select

from api.deps import SessionDep, TenantDep
from api.schemas.common import ListOf, error_responses
from api.schemas.system import ModelPublic
from core.jobs import JobState
from core.models import Adapter, BaseModelRecord, Job

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ListOf[ModelPublic], responses=error_responses())
def list_models(session: SessionDep, tenant: TenantDep) -> ListOf[ModelPublic]:
    """Registry base models, then your adapters from succeeded jobs (newest first)."""
    bases = session.exec(select(BaseModelRecord).order_by(col(BaseModelRecord.name))).all()
    adapters = session.exec(
        select(Adapter)
        .outerjoin(Job, col(Adapter.job_id) == col(Job.id))
        .where(Adapter.tenant_id == tenant)
        .where(or_(col(Adapter.job_id).is_(None), Job.state == JobState.SUCCEEDED.value))
        .order_by(col(Adapter.created_at).desc())
    ).all()
    data = [
        ModelPublic(
            id=b.name,
            kind="base",
            base_model=b.name,
            description=b.description,
            created_at=b.created_at,
        )
        for b in bases
    ]
    data += [
        ModelPublic(
            id=a.id,
            kind="adapter",
            base_model=a.base_model,
            method=a.method,
            job_id=a.job_id,
            step=a.step,
            created_at=a.created_at,
        )
        for a in adapters
    ]
    return ListOf(data=data)
