"""What an engine tells a caller about one request: text deltas, then its result or an error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Result:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float]
    token_ids: tuple[int, ...] = ()  # the answer's tokens (the end token excluded)


@dataclass(frozen=True)
class Event:
    """``delta`` (``text``), ``done`` (``result``) or ``error`` (``message``; ``code`` is
    ``capacity`` when every adapter slot is pinned or busy, else ``failed``)."""

    kind: Literal["delta", "done", "error"]
    text: str = ""
    result: Result | None = None
    message: str = ""
    code: Literal["capacity", "failed"] = "failed"
