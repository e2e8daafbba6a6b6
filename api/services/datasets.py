"""Datasets: validate an uploaded file, store its record, list, find and delete them."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, or_, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.archives import is_archive
from api.pagination import newest_first, split_page
from api.services.dataset_archives import unpack_upload, validate_archive
from api.uploads import StoredUpload, receive_upload
from core.datasets import dataset_root
from core.errors import DatasetInUse, DatasetNotFound, ModelNotFound, PayloadTooLarge
from core.jobs import TERMINAL, JobState
from core.models import BaseModelRecord, Dataset, Job
from core.quotas import check_storage, quota_error, storage_left
from core.settings import Settings
from core.tenants import effective_quotas
from trainer.tokenstats import compute_token_stats  # torch loads only when it runs
from trainer.validation import validate_path

logger = logging.getLogger(__name__)
S = JobState

#: Issues kept per list in the stored report (the counts stay exact).
MAX_REPORTED_ISSUES = 10_000
#: ``path`` of a dataset whose files were deleted while finished jobs still reference its row.
TOMBSTONE = ""


def dataset_dir(artifacts: Path, tenant: str, dataset_id: str) -> Path:
    """``<artifact_root>/datasets/<tenant>/<id>``."""
    return artifacts / "datasets" / tenant / dataset_id


def resolve_model(session: Session, name: str, param: str = "model") -> BaseModelRecord:
    """The registry entry ``name``; raises ``ModelNotFound`` listing the known names."""
    record = session.get(BaseModelRecord, name)
    if record is None:
        known = sorted(session.exec(select(BaseModelRecord.name)).all())
        raise ModelNotFound(
            f"model {name!r} is not in the registry (known: {', '.join(known) or 'none'})",
            param=param,
            details={"known": known},
        )
    return record


def validate_upload(path: Path, model_dir: Path | None, name: str | None = None) -> dict[str, Any]:
    """Run the trainer's validator (and token stats under ``model_dir``); the stored report.

    Issues name the file ``name`` (the uploaded name), never the service's storage path.
    """
    records: list[tuple[int, list[dict[str, Any]]]] = []
    collect = (lambda msgs, pos: records.append((pos, msgs))) if model_dir else None
    report = validate_path(path, on_conversation=collect)
    if model_dir is not None and report.valid:
        report.stats = _token_stats(records, model_dir)
    body = report.to_dict()
    body["truncated"] = max(len(report.errors), len(report.warnings)) > MAX_REPORTED_ISSUES
    body["errors"] = body["errors"][:MAX_REPORTED_ISSUES]
    body["warnings"] = body["warnings"][:MAX_REPORTED_ISSUES]
    for issue in body["errors"] + body["warnings"]:
        issue["file"] = name or path.name
    body["error_count"], body["warning_count"] = len(report.errors), len(report.warnings)
    return body


def _token_stats(records: list[tuple[int, list[dict[str, Any]]]], model_dir: Path) -> Any:
    try:
        return compute_token_stats(records, model_dir=model_dir)
    except (OSError, ValueError) as exc:  # a broken model dir must not lose the upload
        logger.warning("token statistics failed for %s: %s", model_dir, exc)
        return {"error": f"token statistics failed: {exc}"}


def create_dataset(
    *,
    session: Session,
    dataset_id: str,
    tenant: str,
    upload: StoredUpload,
    report: dict[str, Any],
    base_model: str | None,
    stored_bytes: int | None = None,
) -> Dataset:
    """Record a stored, validated upload (``stored_bytes``: its size unpacked, if other)."""
    dataset = Dataset(
        stored_bytes=stored_bytes,
        id=dataset_id,
        tenant_id=tenant,
        filename=upload.filename,
        path=str(upload.path),
        bytes=upload.bytes,
        sha256=upload.sha256,
        conversations=report["conversations"],
        valid=bool(report["valid"]),
        error_count=report["error_count"],
        report=report,
        base_model=base_model,
    )
    session.add(dataset)
    session.commit()
    return dataset


def store_upload(
    *, engine: Engine, settings: Settings, tenant: str, dataset_id: str, upload: StoredUpload
) -> Dataset:
    """Validate a received upload (token stats under its ``model`` field) and record it; a
    dataset archive is unpacked and checked first (:mod:`api.services.dataset_archives`)."""
    with Session(engine, expire_on_commit=False) as session:
        model = upload.fields.get("model") or None
        model_dir = Path(resolve_model(session, model).path) if model else None
        stored = None
        if is_archive(upload.filename):
            upload.path, facts = unpack_upload(upload, settings)
            stored = int(facts["bytes"])
            report = validate_archive(upload.path.parent, settings, facts)
            report["file"] = upload.filename  # callers see what they uploaded, not our paths
        else:
            report = validate_upload(upload.path, model_dir, upload.filename)
        check_storage(session, settings, tenant, upload.bytes if stored is None else stored)
        return create_dataset(
            session=session,
            dataset_id=dataset_id,
            tenant=tenant,
            upload=upload,
            report=report,
            base_model=model,
            stored_bytes=stored,
        )


def _storage_room(engine: Engine, settings: Settings, tenant: str) -> tuple[int | None, int | None]:
    with Session(engine) as session:
        allowed = effective_quotas(session, settings, tenant)["max_storage_bytes"]
        return storage_left(session, settings, tenant), allowed


async def receive_within_quota(
    request: Request, *, engine: Engine, settings: Settings, tenant: str, directory: Path
) -> StoredUpload:
    """Receive an upload (``api.uploads``), refusing with 429 what would pass the tenant's
    storage quota: at once when nothing is left, else as soon as the bytes received pass it."""
    left, allowed = await run_in_threadpool(_storage_room, engine, settings, tenant)
    limit = settings.limits.max_upload_bytes
    if left is None or allowed is None or left >= limit:
        return await receive_upload(request, directory, limit)
    length = request.headers.get("content-length", "")
    requested = int(length) if length.isdigit() else max(1, left + 1)
    over = quota_error(
        tenant,
        "max_storage_bytes",
        used=allowed - left,
        allowed=allowed,
        requested=requested,
        param="file",
    )
    if left <= 0:
        raise over
    try:
        return await receive_upload(request, directory, left)
    except PayloadTooLarge as exc:
        raise over from exc


@dataclass(frozen=True)
class DatasetFile:
    """A stored dataset as jobs and evaluations use it: its id and data file."""

    id: str
    path: str


def get_dataset(
    session: Session, tenant: str, dataset_id: str, param: str = "dataset_id"
) -> Dataset:
    """The caller's dataset; another tenant's or a deleted one is not found."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.tenant_id != tenant or dataset.path == TOMBSTONE:
        raise DatasetNotFound(f"dataset {dataset_id} not found", param=param)
    return dataset


def list_datasets(
    *, session: Session, tenant: str, after: str | None, limit: int
) -> tuple[list[Dataset], bool, str | None]:
    """The caller's datasets, newest first."""
    statement = select(Dataset).where(Dataset.tenant_id == tenant, Dataset.path != TOMBSTONE)
    rows = session.exec(newest_first(statement, Dataset, after, limit)).all()
    return split_page(rows, limit)


def delete_dataset(*, session: Session, dataset: Dataset, force: bool = False) -> None:
    """Delete the files and the record; 409 ``dataset_in_use`` while a job that has not
    succeeded uses it: a failed or cancelled job can still resume and would train on it. With
    ``force`` only unfinished jobs (queued, running, paused, ...) keep it; the failed and
    cancelled ones then cannot resume any more.

    Jobs keep a foreign key to the row, so then the row stays as a tombstone (``path`` empty,
    ``valid`` false): invisible, unusable, its files gone.
    """
    users = session.exec(
        select(Job).where(
            or_(Job.training_dataset_id == dataset.id, Job.validation_dataset_id == dataset.id)
        )
    ).all()
    spared = {S.SUCCEEDED.value} | ({S.FAILED.value, S.CANCELLED.value} if force else set())
    needing = [job for job in users if job.state not in spared]
    if needing:
        listed = ", ".join(f"{job.id} ({job.state})" for job in needing[:5])
        more = f" and {len(needing) - 5} more" if len(needing) > 5 else ""
        unfinished = any(job.state not in TERMINAL for job in needing)
        how = (
            "cancel them or wait until they finish"
            if unfinished
            else "resume them first, or delete with force=true (they cannot resume then)"
        )
        raise DatasetInUse(
            f"dataset {dataset.id} is needed by {listed}{more}: {how}",
            param="dataset_id",
            details={"jobs": [job.id for job in needing]},
        )
    directory = dataset_root(Path(dataset.path))
    if users:
        dataset.path, dataset.valid = TOMBSTONE, False
        session.add(dataset)
    else:
        session.delete(dataset)
    session.commit()
    shutil.rmtree(directory, ignore_errors=True)
    logger.info("deleted dataset %s (%d jobs keep its record)", dataset.id, len(users))


def _last_written(directory: Path) -> float:
    """The newest mtime of ``directory`` and its files (an upload in progress is fresh)."""
    stamps = [directory.stat().st_mtime]
    stamps += [f.stat().st_mtime for f in directory.iterdir() if f.is_file()]
    return max(stamps)


def sweep_orphan_uploads(*, engine: Engine, artifacts: Path, grace_s: float) -> list[Path]:
    """Remove upload directories older than ``grace_s`` that no dataset row names: what an API
    process killed mid-upload (or mid-validation) left. Returns the directories removed."""
    root = artifacts / "datasets"
    if not root.is_dir():
        return []
    cutoff = time.time() - grace_s
    candidates = {
        d.name: d
        for tenant in root.iterdir()
        if tenant.is_dir()
        for d in tenant.iterdir()
        if d.is_dir() and _last_written(d) < cutoff
    }
    if not candidates:
        return []
    with Session(engine) as session:
        rows = session.exec(
            select(Dataset.id, Dataset.path).where(col(Dataset.id).in_(list(candidates)))
        ).all()
    kept = {row_id for row_id, path in rows if path != TOMBSTONE}
    removed = [d for name, d in candidates.items() if name not in kept]
    for directory in removed:
        shutil.rmtree(directory, ignore_errors=True)
        logger.warning("removed %s: an upload that never became a dataset", directory)
    return removed
