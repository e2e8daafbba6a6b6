"""Dataset archives: unpack an uploaded ``.zip``/``.tar.gz`` (:mod:`api.archives`), validate its
data files as vision data with every image checked, and record it.

The archive is unpacked into ``<dataset>/files`` and then deleted; the record's ``path`` is
``files/train.jsonl``, so the worker links the whole tree into a job's data directory and the
images keep their relative paths (:mod:`worker.jobdir`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api.archives import ArchiveLimits, unpack
from api.uploads import StoredUpload
from core.datasets import ARCHIVE_FILES
from core.settings import Settings
from trainer.images import ImageCheck
from trainer.validation import validate_path

#: Issues kept per list in the stored report (as for a plain upload).
MAX_REPORTED_ISSUES = 10_000


def unpack_upload(upload: StoredUpload, settings: Settings) -> tuple[Path, dict[str, Any]]:
    """Unpack ``upload`` beside itself and remove it; the train file and the archive's facts.

    Raises:
        InvalidArchive, PayloadTooLarge: an unsafe or malformed archive (nothing is kept).
    """
    limits = settings.limits
    files = upload.path.parent / ARCHIVE_FILES
    try:
        unpacked = unpack(
            upload.path,
            files,
            ArchiveLimits(
                max_bytes=limits.max_archive_bytes,
                max_files=limits.max_archive_files,
                max_pixels=limits.max_image_pixels,
            ),
        )
    finally:
        upload.path.unlink(missing_ok=True)
    facts = {"files": unpacked.files, "bytes": unpacked.bytes, "images": unpacked.images}
    return unpacked.root / "train.jsonl", facts


def validate_archive(root: Path, settings: Settings, facts: dict[str, Any]) -> dict[str, Any]:
    """The stored report of an unpacked archive: its data files checked as vision data, each
    image path confined to the archive and each image file checked."""
    images = ImageCheck(confined=True, max_pixels=settings.limits.max_image_pixels)
    report = validate_path(root, vision=True, images=images)
    report.stats = {"archive": facts, "images_referenced": images.images}
    body = report.to_dict()
    body["truncated"] = max(len(report.errors), len(report.warnings)) > MAX_REPORTED_ISSUES
    body["errors"] = body["errors"][:MAX_REPORTED_ISSUES]
    body["warnings"] = body["warnings"][:MAX_REPORTED_ISSUES]
    body["error_count"], body["warning_count"] = len(report.errors), len(report.warnings)
    return body
