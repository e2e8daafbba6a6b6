"""Readers for conversation data: ``.jsonl``, ``.json`` and the upstream data directory layout.

* ``.jsonl``: one conversation per line, blank lines ignored. A line that is not valid JSON (or
  not UTF-8) becomes a record carrying a :class:`ReadError`; reading goes on with the next line.
  Records carry their 1-based line number and a 0-based index (the ordinal of the non-blank line).
* ``.json``: an array of conversations, or one conversation object. Records carry the 0-based
  array index and the line where the element starts. A syntax error stops reading that file.
* A directory laid out like the upstream demo's ``data/AdvertiseGen/``: whichever of
  ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` exist, in that order.

Problems with the *input itself* (missing path, unsupported suffix, directory with no data file,
unreadable file) raise :class:`DataFileError`; problems with the *content* are records with an
``error`` so that a validator can report all of them. This module never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SUFFIXES: tuple[str, ...] = (".jsonl", ".json")
DATA_DIR_FILES: tuple[str, ...] = ("train.jsonl", "dev.jsonl", "test.jsonl")

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_BOM = "\ufeff"
JSONL_HINT = "each line must be one complete JSON object"

ReadErrorKind = Literal["json", "utf8", "empty"]


class DataFileError(Exception):
    """The input cannot be read at all: missing path, unsupported suffix, empty data dir, I/O."""


@dataclass(frozen=True, slots=True)
class ReadError:
    """Why a record could not be parsed. ``kind`` is mapped to an error code by the validator."""

    kind: ReadErrorKind
    message: str


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~3x more per row to build
class RawRecord:
    """One parsed JSON value (or a read error) with its position.

    ``index`` is ``None`` only for a file-level problem (``empty`` file, undecodable ``.json``).
    """

    file: str
    line: int | None
    index: int | None
    value: Any = None
    error: ReadError | None = None


def is_jsonl(file: str | Path) -> bool:
    """Whether positions in ``file`` are reported by line (JSONL) rather than by array index."""
    return str(file).endswith(".jsonl")


def data_files(path: str | Path) -> list[Path]:
    """The data files behind ``path``: the file itself, or the present files of a data dir."""
    p = Path(path)
    if p.is_dir():
        files = [p / name for name in DATA_DIR_FILES if (p / name).is_file()]
        if not files:
            expected = ", ".join(DATA_DIR_FILES)
            raise DataFileError(f"{p}: no data file in directory (expected {expected})")
        return files
    if not p.exists():
        raise DataFileError(f"{p}: no such file or directory")
    if p.suffix not in SUFFIXES:
        suffix = p.suffix or "(none)"
        raise DataFileError(f"{p}: unsupported file type {suffix!r} (use .jsonl, .json or a dir)")
    return [p]


def iter_records(path: str | Path) -> Iterator[RawRecord]:
    """Yield every record of every data file behind ``path`` (see the module docstring)."""
    for file in data_files(path):
        reader = iter_jsonl if file.suffix == ".jsonl" else iter_json
        yield from reader(file)


def iter_jsonl(path: str | Path) -> Iterator[RawRecord]:
    """Yield one record per non-blank line of a JSONL file."""
    name = str(path)
    index = 0
    try:
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                yield _parse_line(name, lineno, index, raw)
                index += 1
    except OSError as exc:
        raise DataFileError(f"{name}: {exc.strerror or exc}") from exc
    if index == 0:
        yield RawRecord(name, None, None, error=ReadError("empty", "file has no conversations"))


def _parse_line(name: str, lineno: int, index: int, raw: bytes) -> RawRecord:
    try:
        text = raw.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"not valid UTF-8 at byte {exc.start + 1} of the line ({exc.reason})"
        return RawRecord(name, lineno, index, error=ReadError("utf8", msg))
    if lineno == 1 and text.startswith(_BOM):
        text = text[1:]
    try:
        return RawRecord(name, lineno, index, json.loads(text))
    except json.JSONDecodeError as exc:
        msg = f"invalid JSON: {exc.msg} at column {exc.colno}; {JSONL_HINT}"
    except (ValueError, RecursionError) as exc:  # huge integers, absurd nesting
        msg = f"invalid JSON: {_reason(exc)}"
    return RawRecord(name, lineno, index, error=ReadError("json", msg))


def iter_json(path: str | Path) -> Iterator[RawRecord]:
    """Yield the elements of a JSON array file (or the one object of a JSON object file)."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataFileError(f"{name}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        msg = f"not valid UTF-8 ({exc.reason})"
        yield RawRecord(name, line, None, error=ReadError("utf8", msg))
        return
    yield from _iter_json_text(name, text)


def _iter_json_text(name: str, text: str) -> Iterator[RawRecord]:
    pos = _skip_ws(text, 0)
    if pos == len(text):
        yield RawRecord(name, None, None, error=ReadError("empty", "file has no conversations"))
        return
    if text[pos] != "[":
        yield _decode_single(name, text, pos)
        return
    pos = _skip_ws(text, pos + 1)
    if text.startswith("]", pos):
        yield RawRecord(name, None, None, error=ReadError("empty", "file has no conversations"))
        return
    yield from _iter_array(name, text, pos)


def _iter_array(name: str, text: str, pos: int) -> Iterator[RawRecord]:
    tracker = _LineTracker(text)
    index = 0
    while True:
        try:
            value, end = _decode_at(text, pos)
        except json.JSONDecodeError as exc:
            yield _json_error(name, exc, index)
            return
        yield RawRecord(name, tracker.line_at(pos), index, value)
        index += 1
        pos = _skip_ws(text, end)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
            continue
        try:
            if not text.startswith("]", pos):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
            _check_trailing(text, pos + 1)
        except json.JSONDecodeError as exc:
            yield _json_error(name, exc, None)
        return


def _decode_single(name: str, text: str, pos: int) -> RawRecord:
    try:
        value, end = _decode_at(text, pos)
        _check_trailing(text, end)
    except json.JSONDecodeError as exc:
        return _json_error(name, exc, 0)
    return RawRecord(name, text.count("\n", 0, pos) + 1, 0, value)


def _decode_at(text: str, pos: int) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as exc:  # huge integers, absurd nesting
        raise json.JSONDecodeError(_reason(exc), text, pos) from exc


def _reason(exc: BaseException) -> str:
    return "nesting too deep" if isinstance(exc, RecursionError) else str(exc)


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos


def _check_trailing(text: str, pos: int) -> None:
    end = _skip_ws(text, pos)
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)


def _json_error(name: str, exc: json.JSONDecodeError, index: int | None) -> RawRecord:
    msg = f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    return RawRecord(name, exc.lineno, index, error=ReadError("json", msg))


class _LineTracker:
    """Line numbers of increasing offsets in ``text``, counting newlines incrementally."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._line = 1

    def line_at(self, pos: int) -> int:
        self._line += self._text.count("\n", self._pos, pos)
        self._pos = pos
        return self._line


def data_sha256(paths: str | Path | Iterable[str | Path]) -> str:
    """SHA-256 over the data files behind ``paths`` (a file, a data dir, or a list of them).

    Each file contributes its base name, its size and its bytes, in the given order (a data dir
    expands to train, dev, test), so renaming a split changes the hash and moving the data does not.
    """
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    digest = hashlib.sha256()
    for item in items:
        for file in data_files(item):
            digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
            with open(file, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()
