"""Which adapters a tenant sees, and promoting a checkpoint to one."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, or_, select

from core.errors import CheckpointNotFound
from core.jobs import PROMOTED, JobState, adapter_id, save_adapter
from core.models import Adapter, Checkpoint, Job


def visible_adapters(session: Session, tenant: str) -> Sequence[Adapter]:
    """The tenant's adapters, newest first: a job's own once it succeeded (a resumed job's
    is hidden until it succeeds again), promoted checkpoints always."""
    return session.exec(
        select(Adapter)
        .outerjoin(Job, col(Adapter.job_id) == col(Job.id))
        .where(Adapter.tenant_id == tenant)
        .where(
            or_(
                col(Adapter.job_id).is_(None),
                Job.state == JobState.SUCCEEDED.value,
                col(Adapter.id).contains(PROMOTED),
            )
        )
        .order_by(col(Adapter.created_at).desc())
    ).all()


def find_checkpoint(session: Session, job: Job, step: int, *, param: str) -> Checkpoint:
    """The job's checkpoint at ``step``; ``checkpoint_not_found`` naming ``param`` if none."""
    checkpoint = session.exec(
        select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step == step)
    ).first()
    if checkpoint is None:
        raise CheckpointNotFound(f"job {job.id} has no checkpoint at step {step}", param=param)
    return checkpoint


def promote(session: Session, job: Job, checkpoint: Checkpoint) -> Adapter:
    """An adapter serving ``checkpoint`` (the same one when promoted before)."""
    return save_adapter(session, job, checkpoint, adapter_id(job, checkpoint.step))
