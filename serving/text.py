"""A row's text as its tokens arrive: incremental detokenization, stop strings and the deltas a
stream sends.

Decoding the whole output again at every step costs O(length) per token; :class:`RowText`
decodes a window of the last few tokens instead (the prefix/read offsets of vLLM's and TGI's
incremental detokenizers): byte-level BPE tokens that end inside a UTF-8 character decode to
U+FFFD until the character is complete, so the window waits for it. Deltas hold back any tail
that could still become a stop string, and always add up to the final text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Decode = Callable[[list[int]], str]
_WINDOW = 8  # tokens a character may span before an undecodable tail is taken as it is


class RowText:
    """The text of one row's generated tokens (special tokens skipped, leading blanks
    stripped, as a full ``decode(...).strip()`` of the upstream inference gives)."""

    def __init__(self, decode: Decode, stop: tuple[str, ...], *, live: bool = True) -> None:
        self.decode = decode
        self.stop = tuple(s for s in stop if s)
        # text decoded as tokens arrive (streaming, stop strings); otherwise once, at the end
        self.live = live or bool(self.stop)
        self.ids: list[int] = []
        self._raw = ""  # decoded so far, not yet stripped
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def add(self, token: int) -> None:
        """Append ``token``; ``stopped`` turns true when the text reaches a stop string (the
        text then ends before it)."""
        self.ids.append(token)
        if not self.live:
            return
        window = self.ids[self._prefix_offset :]
        before = self.decode(self.ids[self._prefix_offset : self._read_offset])
        now = self.decode(window)
        # a character still incomplete decodes to U+FFFD: wait for it, a few tokens at most
        if len(now) > len(before) and (not now.endswith("\ufffd") or len(window) > _WINDOW):
            self._raw += now[len(before) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        text = self._raw.lstrip()
        cut = _stop_at(text, self.stop)
        if cut is not None:
            text, self.stopped = text[:cut], True
        self.text = text

    def finish(self) -> None:
        """The text is final: whatever the window still held back is decoded."""
        if not self.live:
            self.text = self.decode(self.ids).lstrip()
            return
        rest = self.decode(self.ids[self._prefix_offset :])
        before = self.decode(self.ids[self._prefix_offset : self._read_offset])
        if not self.stopped and len(rest) > len(before):
            self._raw += rest[len(before) :]
            self.text = self._raw.lstrip()
            cut = _stop_at(self.text, self.stop)
            if cut is not None:
                self.text = self.text[:cut]

    def delta(self, final: bool) -> str:
        """The part of the text not sent yet that can no longer change."""
        safe = len(self.text) if final else _safe_length(self.text, self.stop)
        if safe <= self.emitted:
            return ""
        piece = self.text[self.emitted : safe]
        self.emitted = safe
        return piece


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _safe_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of ``text`` can no longer change: not a tail that a stop string could start
    with."""
    end = len(text)
    for stop in stops:
        for n in range(min(len(stop) - 1, end), 0, -1):
            if text[end - n : end] == stop[:n]:
                end -= n
                break
    return max(end, 0)


def decoder(tokenizer: Any) -> Decode:
    """``ids -> text`` with special tokens skipped: the Rust tokenizer itself where the
    transformers wrapper would add nothing (five times faster per call), else the wrapper."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return lambda ids: str(backend.decode(ids, skip_special_tokens=True))
    return lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True))
