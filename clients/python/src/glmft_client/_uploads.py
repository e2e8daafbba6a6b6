"""Files to upload: a path, bytes or a binary file object, read in chunks with a progress
callback. Every retry of the request reads the file again from its first byte."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

FileInput = str | os.PathLike[str] | bytes | BinaryIO
#: Called with (bytes sent, total bytes) as the upload proceeds.
ProgressCallback = Callable[[int, int], None]


class ProgressReader:
    """A binary file wrapper that reports how much of it was read."""

    def __init__(self, handle: IO[bytes], callback: ProgressCallback | None) -> None:
        self._handle = handle
        self._callback = callback
        self.sent = 0
        self.total = handle.seek(0, os.SEEK_END)  # the whole file is sent, from its first byte
        handle.seek(0)

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self.sent += len(chunk)
        if self._callback is not None and chunk:
            self._callback(self.sent, self.total)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._handle.seek(offset, whence)
        if whence == os.SEEK_SET:  # a retry starts over
            self.sent = position
        return position

    def tell(self) -> int:
        return self._handle.tell()

    def fileno(self) -> int:
        return self._handle.fileno()


@contextmanager
def open_upload(
    file: FileInput, filename: str | None, on_progress: ProgressCallback | None
) -> Iterator[tuple[str, ProgressReader]]:
    """``(filename, reader)`` for ``file``; a path is opened here and closed on exit."""
    if isinstance(file, bytes):
        yield filename or "upload.jsonl", ProgressReader(io.BytesIO(file), on_progress)
    elif isinstance(file, str | os.PathLike):
        path = Path(file)
        with path.open("rb") as handle:
            yield filename or path.name, ProgressReader(handle, on_progress)
    else:
        name = filename or Path(str(getattr(file, "name", "upload.jsonl"))).name
        yield name, ProgressReader(file, on_progress)
