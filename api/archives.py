"""Unpack an uploaded dataset archive (``.zip``, ``.tar.gz``/``.tgz``) safely.

An archive holds ``train.jsonl`` (and ``dev.jsonl``) plus the images they name by paths
relative to the archive (or to its one top-level folder, as zipping a folder makes). Nothing in
it is trusted, so it is never handed to ``extractall``; each member is checked, then copied by
this module:

* names: no absolute paths, drive letters, ``..`` components, NUL or empty names;
* types: regular files and folders only; a symlink, hard link or device is refused;
* bounds: at most ``max_files`` files and ``max_bytes`` unpacked bytes, counted on the bytes
  actually written (a member's declared size may lie), so a zip bomb stops at the bound;
* images (by suffix): the header must be an accepted format and declare at most
  ``max_pixels`` pixels, before any pixel is decoded (:mod:`trainer.images`).

macOS' ``__MACOSX/`` and ``._*`` resource forks are skipped. Any refusal removes what was
unpacked and raises ``InvalidArchive`` (422) or ``PayloadTooLarge`` (413), naming the member.
"""

from __future__ import annotations

import posixpath
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from core.errors import InvalidArchive, PayloadTooLarge
from trainer.images import ImageError, image_size

SUFFIXES: tuple[str, ...] = (".zip", ".tar.gz", ".tgz")
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"})
DATA_FILES: tuple[str, ...] = ("train.jsonl", "dev.jsonl")
_CHUNK = 1 << 20
_PARAM = "file"


def is_archive(filename: str) -> bool:
    """Whether an upload named ``filename`` is a dataset archive."""
    return filename.lower().endswith(SUFFIXES)


@dataclass(frozen=True)
class ArchiveLimits:
    max_bytes: int
    max_files: int
    max_pixels: int


@dataclass(frozen=True)
class Unpacked:
    """The data root (where ``train.jsonl`` is), and what was unpacked."""

    root: Path
    files: int
    bytes: int
    images: int


@dataclass(frozen=True)
class _Member:
    name: str  # as stored, for messages
    parts: tuple[str, ...]  # the checked relative path
    is_dir: bool
    open: IO[bytes] | None = None


def unpack(archive: Path, dest: Path, limits: ArchiveLimits) -> Unpacked:
    """Unpack ``archive`` into ``dest`` (created; removed again on any refusal)."""
    dest.mkdir(parents=True)
    try:
        return _unpack(archive, dest, limits)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _unpack(archive: Path, dest: Path, limits: ArchiveLimits) -> Unpacked:
    files = written = images = 0
    for member in _members(archive):
        target = dest.joinpath(*member.parts)
        if member.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        files += 1
        if files > limits.max_files:
            raise InvalidArchive(
                f"the archive holds more than {limits.max_files} files", param=_PARAM
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        written = _copy(member, target, written, limits.max_bytes)
        if target.suffix.lower() in IMAGE_SUFFIXES:
            images += 1
            try:
                image_size(target, max_pixels=limits.max_pixels)
            except ImageError as exc:
                raise InvalidArchive(f"{member.name}: {exc}", param=_PARAM) from exc
    return Unpacked(_data_root(dest), files, written, images)


def _copy(member: _Member, target: Path, written: int, max_bytes: int) -> int:
    if member.open is None:
        raise InvalidArchive(f"{member.name}: cannot be unpacked", param=_PARAM)
    try:
        with member.open as source, target.open("xb") as sink:  # "x": a duplicate name fails
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise PayloadTooLarge(
                        f"the archive unpacks to more than {max_bytes} bytes", param=_PARAM
                    )
                sink.write(chunk)
    except FileExistsError as exc:
        raise InvalidArchive(
            f"{member.name}: the archive holds this path twice", param=_PARAM
        ) from exc
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        if isinstance(exc, PayloadTooLarge):
            raise
        raise InvalidArchive(f"{member.name}: cannot be unpacked ({exc})", param=_PARAM) from exc
    return written


def _members(archive: Path) -> Iterator[_Member]:
    if archive.name.lower().endswith(".zip"):
        yield from _zip_members(archive)
    else:
        yield from _tar_members(archive)


def _zip_members(archive: Path) -> Iterator[_Member]:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise InvalidArchive(f"{info.filename}: links are not allowed", param=_PARAM)
                parts = _checked_parts(info.filename)
                if parts is None:
                    continue
                yield _Member(
                    info.filename, parts, info.is_dir(), None if info.is_dir() else zf.open(info)
                )
    except zipfile.BadZipFile as exc:
        raise InvalidArchive(f"not a readable zip archive ({exc})", param=_PARAM) from exc


def _tar_members(archive: Path) -> Iterator[_Member]:
    try:
        with tarfile.open(archive, mode="r:gz") as tf:
            for info in tf:  # streamed: members are read in order, never all at once
                if info.issym() or info.islnk():
                    raise InvalidArchive(f"{info.name}: links are not allowed", param=_PARAM)
                if not (info.isfile() or info.isdir()):
                    raise InvalidArchive(
                        f"{info.name}: only files and folders are allowed", param=_PARAM
                    )
                parts = _checked_parts(info.name)
                if parts is None:
                    continue
                yield _Member(
                    info.name, parts, info.isdir(), None if info.isdir() else tf.extractfile(info)
                )
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidArchive(f"not a readable .tar.gz archive ({exc})", param=_PARAM) from exc


def _checked_parts(name: str) -> tuple[str, ...] | None:
    """The member's path as safe parts; None for a member to skip (macOS metadata)."""
    raw = name.replace("\\", "/")
    if not raw or "\x00" in raw or raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise InvalidArchive(f"{name!r}: absolute paths are not allowed", param=_PARAM)
    parts = tuple(p for p in PurePosixPath(raw).parts if p not in ("", "."))
    if ".." in parts:
        raise InvalidArchive(f"{name!r}: paths with '..' are not allowed", param=_PARAM)
    if not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._"):
        return None
    if posixpath.normpath("/".join(parts)).startswith(".."):  # belt and braces
        raise InvalidArchive(f"{name!r}: the path leaves the archive", param=_PARAM)
    return parts


def _data_root(dest: Path) -> Path:
    """``dest`` with ``train.jsonl`` at its top: an archive made by zipping a folder has its
    one folder's contents moved up."""
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "train.jsonl").is_file():
        folder = entries[0].rename(dest / f".unpacked-{entries[0].name}")
        for entry in folder.iterdir():
            entry.rename(dest / entry.name)
        folder.rmdir()
    if not (dest / "train.jsonl").is_file():
        raise InvalidArchive(
            "the archive has no train.jsonl at its top (or in its one top-level folder)",
            param=_PARAM,
        )
    return dest
