"""``/models``: the base models of the registry and your fine-tuned adapters."""

from __future__ import annotations

from fastapi import APIRouter
from sqlmodel import col, select

from api.deps import SessionDep, TenantDep
from api.schemas.common import ListOf, error_responses
from api.schemas.system import ModelPublic
from api.services.adapters import visible_adapters
from core.models import BaseModelRecord

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ListOf[ModelPublic], responses=error_responses())
def list_models(session: SessionDep, tenant: TenantDep) -> ListOf[ModelPublic]:
    """Registry base models, then your adapters (newest first): those of succeeded jobs and
    promoted checkpoints."""
    bases = session.exec(select(BaseModelRecord).order_by(col(BaseModelRecord.name))).all()
    adapters = visible_adapters(session, tenant)
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
