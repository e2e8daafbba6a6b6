"""The storage quota during training: a checkpoint that would pass its tenant's
``max_storage_bytes`` fails the job (``storage_quota_exceeded``, the user's fault), and is
removed with any newer one, while the older checkpoints stay recorded, on disk and resumable.

The worker checks each ``checkpoint`` event before recording it, against the tenant's usage
in SQL at that moment (datasets and every recorded checkpoint of every job of the tenant).
"""

from __future__ import annotations

import logging
import re
import shutil

from sqlmodel import Session, select

from core.models import Checkpoint, Job
from core.quotas import storage_left
from core.settings import Settings
from trainer.contract.events import CheckpointEvent, StatusEvent, TrainerEvent, UnknownEvent
from trainer.contract.layout import JobDir

logger = logging.getLogger(__name__)
CODE = "storage_quota_exceeded"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def split_at_quota(
    session: Session, settings: Settings, job: Job, events: list[TrainerEvent | UnknownEvent]
) -> tuple[list[TrainerEvent | UnknownEvent], StatusEvent | None]:
    """``events`` up to (not including) the first checkpoint that would pass the quota, and
    for that checkpoint a failed ``status`` event saying why (``None``: all fit)."""
    left = storage_left(session, settings, job.tenant_id)
    if left is None:
        return events, None
    for index, event in enumerate(events):
        if not isinstance(event, CheckpointEvent):
            continue
        step, size = event.step, event.bytes
        existing = session.exec(
            select(Checkpoint.bytes).where(Checkpoint.job_id == job.id, Checkpoint.step == step)
        ).first()
        needed = size - (existing or 0)  # a resumed attempt saving a step again replaces it
        if needed > left:
            message = (
                f"the checkpoint at step {step} ({size:,} bytes) would pass tenant "
                f"{job.tenant_id}'s storage quota ({max(0, left):,} bytes left); the older "
                "checkpoints are kept"
            )
            status = StatusEvent(
                status="failed", code=CODE, message=message, user_error=True, step=step
            )
            return events[:index], status
        left -= needed
    return events, None


def discard_from(directory: JobDir, step: int) -> list[int]:
    """Remove the job's checkpoint directories of ``step`` and later (never recorded);
    returns their steps."""
    removed = []
    output = directory.output
    for child in sorted(output.iterdir()) if output.is_dir() else []:
        match = _CHECKPOINT_DIR.match(child.name)
        if match and int(match.group(1)) >= step and directory.contains(child):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(int(match.group(1)))
    if removed:
        logger.warning("%s: removed checkpoints %s past the storage quota", directory.root, removed)
    return removed
