"""Stream a multipart upload straight to its final directory, hashing and counting on the way.

Starlette's form parser spools the whole body to a temp file before a handler runs, so the size
limit would only be checked after the bytes arrived; here the limit is enforced per chunk and
the partial file is removed at once (``payload_too_large``). The bytes go to a hidden
``.<name>.partial`` file, renamed when the upload is complete: a process killed mid-upload
leaves only a partial file in a directory with no dataset row, which
:func:`api.services.datasets.sweep_orphan_uploads` removes.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import IO

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from core.errors import Invalid, PayloadTooLarge

FILE_FIELD = "file"
PARTIAL_SUFFIX = ".partial"
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 8
_FLUSH_BYTES = 1 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SUFFIXES = (".jsonl", ".json", ".zip", ".tar.gz", ".tgz")  # archives: api.archives
_MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries beside the file itself


@dataclass
class StoredUpload:
    """The file written to ``path`` and the form's other (text) fields."""

    path: Path
    filename: str
    bytes: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)


def safe_filename(raw: str) -> str:
    """The base name of ``raw`` if it is a plain ``.jsonl``/``.json`` (or dataset archive)
    name; raises ``Invalid``."""
    name = PurePath(raw.replace("\\", "/")).name
    if not _SAFE_NAME.match(name) or not name.lower().endswith(_SUFFIXES):
        raise Invalid(
            f"file name {raw!r} must be a plain name ending in .jsonl, .json, .zip or .tar.gz "
            "(letters, digits, '.', '_', '-')",
            param=FILE_FIELD,
        )
    return name


class _Receiver:
    """python-multipart callbacks: a file part goes to disk, text parts to ``fields``."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.sha = hashlib.sha256()
        self.size = 0
        self.filename: str | None = None
        self.handle: IO[bytes] | None = None
        self.pending: list[bytes] = []
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._text = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_val,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
        }

    def _part_begin(self) -> None:
        self._disposition, self._text, self._is_file = b"", bytearray(), False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = b"filename" in options
        if not self._is_file:
            if len(self.fields) >= MAX_FIELDS:
                raise Invalid(f"at most {MAX_FIELDS} form fields")
            return
        if self._name != FILE_FIELD or self.filename is not None:
            raise Invalid(
                f"send exactly one file, in the form field {FILE_FIELD!r}", param=FILE_FIELD
            )
        self.filename = safe_filename(options[b"filename"].decode("utf-8", "replace"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.handle = self.partial_path.open("wb")

    @property
    def partial_path(self) -> Path:
        return self.directory / f".{self.filename}{PARTIAL_SUFFIX}"

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self._is_file:
            self._text += chunk
            if len(self._text) > MAX_FIELD_BYTES:
                raise Invalid(f"form field {self._name!r} is too long", param=self._name)
            return
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(
                f"the file is larger than the limit of {self.max_bytes} bytes", param=FILE_FIELD
            )
        self.sha.update(chunk)
        self.pending.append(chunk)

    def _part_end(self) -> None:
        if not self._is_file:
            value = self._text.decode("utf-8", "replace")
            if "\x00" in value:  # no name or model holds one, and PostgreSQL cannot store it
                raise Invalid(f"form field {self._name!r} holds a NUL character", param=self._name)
            self.fields[self._name] = value

    async def flush(self, force: bool = False) -> None:
        """Write pending file bytes in a worker thread (disk I/O off the event loop)."""
        if self.handle is None or not self.pending:
            return
        if force or sum(len(c) for c in self.pending) >= _FLUSH_BYTES:
            data, self.pending = b"".join(self.pending), []
            await anyio.to_thread.run_sync(self.handle.write, data)


def _boundary(request: Request, max_bytes: int) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise Invalid(
            "send the dataset as multipart/form-data with a 'file' field", param=FILE_FIELD
        )
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes + _MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"the upload is larger than the limit of {max_bytes} bytes")
    return params[b"boundary"]


async def receive_upload(request: Request, directory: Path, max_bytes: int) -> StoredUpload:
    """Stream the multipart body of ``request`` into ``directory`` (removed again on failure).

    Raises:
        PayloadTooLarge: the file exceeds ``max_bytes``.
        Invalid: not multipart, no file, a bad file name or malformed form data.
    """
    boundary = _boundary(request, max_bytes)
    receiver = _Receiver(directory, max_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            await receiver.flush()
        parser.finalize()
        await receiver.flush(force=True)
    except FormParserError as exc:
        _discard(receiver, directory)
        raise Invalid(f"malformed multipart body: {exc}") from exc
    except BaseException:
        _discard(receiver, directory)
        raise
    if receiver.handle is None or receiver.filename is None:
        _discard(receiver, directory)
        raise Invalid(f"no file in the form field {FILE_FIELD!r}", param=FILE_FIELD)
    receiver.handle.close()
    final = directory / receiver.filename
    receiver.partial_path.replace(final)
    return StoredUpload(
        final,
        receiver.filename,
        receiver.size,
        receiver.sha.hexdigest(),
        receiver.fields,
    )


def _discard(receiver: _Receiver, directory: Path) -> None:
    if receiver.handle is not None:
        receiver.handle.close()
    shutil.rmtree(directory, ignore_errors=True)
