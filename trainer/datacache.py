"""Pre-tokenised training features cached on disk, so a second job on the same data, tokenizer
and lengths skips validation and tokenisation (time to first step).

An entry is ``<cache_dir>/<key>.npz``: every conversation's ``input_ids`` and ``labels``
concatenated (int32) with their offsets. The key hashes all that decides the features: the data
file's bytes, the tokenizer's files, the template code, ``combine`` and ``max_length``. So a
changed file, tokenizer or setting is a new entry, never a stale hit. Entries are written to a
temporary name and renamed, so readers see whole files only; a damaged or unreadable entry is
rebuilt, and a cache directory that cannot be written only costs the cache (a warning).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trainer import template
from trainer.datafiles import data_sha256

logger = logging.getLogger(__name__)

Features = list[dict[str, list[int]]]
_TOKENIZER_FILES = ("tokenizer", "special_tokens", "added_tokens", "chat_template", "vocab")


def cache_key(data_file: Path, tokenizer_dir: Path, *, combine: bool, max_length: int) -> str:
    digest = hashlib.sha256()
    digest.update(data_sha256(data_file).encode())
    for file in sorted(tokenizer_dir.iterdir()):
        if file.is_file() and file.name.startswith(_TOKENIZER_FILES):
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    digest.update(Path(template.__file__).read_bytes())
    digest.update(f"combine={combine}\0max_length={max_length}".encode())
    return digest.hexdigest()[:32]


def cached_features(
    cache_dir: Path | None,
    key: str,
    build: Callable[[], Features],
) -> tuple[Features, bool]:
    """The features of ``key`` from ``cache_dir``, else ``build()`` (stored for next time);
    and whether they came from the cache. ``cache_dir`` None disables the cache."""
    if cache_dir is None:
        return build(), False
    path = cache_dir / f"{key}.npz"
    if path.is_file():
        try:
            return _load(path), True
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            logger.warning("rebuilding the damaged feature cache entry %s: %s", path, exc)
    features = build()
    try:
        _store(path, features)
    except OSError as exc:
        logger.warning("cannot write the feature cache %s (%s); continuing without it", path, exc)
    return features, False


def _store(path: Path, features: Features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(f["input_ids"]) for f in features], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat_ids = np.fromiter((t for f in features for t in f["input_ids"]), dtype=np.int32)
    flat_labels = np.fromiter((t for f in features for t in f["labels"]), dtype=np.int32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, offsets=offsets, input_ids=flat_ids, labels=flat_labels)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> Features:
    with np.load(path) as data:
        offsets, ids, labels = data["offsets"], data["input_ids"], data["labels"]
    if len(ids) != len(labels) or offsets[-1] != len(ids):
        raise ValueError("inconsistent arrays")
    return [
        {"input_ids": ids[a:b].tolist(), "labels": labels[a:b].tolist()}
        for a, b in itertools.pairwise(offsets.tolist())
    ]
