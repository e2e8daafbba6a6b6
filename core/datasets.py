"""Where an uploaded dataset's files live, as the API writes them and the worker reads them.

``<artifact_root>/datasets/<tenant>/<id>/`` holds the uploaded ``.jsonl``/``.json`` file, or,
for a dataset archive (images), its unpacked tree under ``files/`` with ``train.jsonl`` (and
``dev.jsonl``) at the top; the record's ``path`` names the data file in both cases.
"""

from __future__ import annotations

from pathlib import Path

from trainer.contract.layout import TRAIN_FILE, VALIDATION_FILE

#: The directory an uploaded dataset archive is unpacked into (``<dataset>/files``).
ARCHIVE_FILES = "files"


def is_archive_dataset(train_file: Path) -> bool:
    """Whether ``train_file`` is the ``train.jsonl`` of an unpacked dataset archive."""
    return train_file.parent.name == ARCHIVE_FILES and train_file.name == TRAIN_FILE


def archive_validation(train_file: Path) -> Path | None:
    """The ``dev.jsonl`` an unpacked dataset archive carries beside ``train_file``, if any."""
    if not is_archive_dataset(train_file):
        return None
    dev = train_file.with_name(VALIDATION_FILE)
    return dev if dev.is_file() else None


def dataset_root(data_file: Path) -> Path:
    """The dataset's own directory (what deleting the dataset removes)."""
    return data_file.parent.parent if is_archive_dataset(data_file) else data_file.parent
