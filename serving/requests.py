"""A request to an engine (torch-free: the API builds it without loading torch)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from serving.adapters import AdapterSpec
from serving.events import Event
from serving.params import GenerationParams


@dataclass
class Request:
    """One prompt to answer, told of its progress through ``on_event`` (called on the engine's
    thread: keep it short)."""

    prompt: list[int]
    params: GenerationParams
    on_event: Callable[[Event], None]
    adapter: AdapterSpec | None = None
    cancelled: bool = False  # set by the caller (a client went away): the row stops
    submitted: float = field(default_factory=time.monotonic)
    # work nobody waits on interactively (an evaluation): admitted after every other request
    background: bool = False
    # text deltas as the answer grows; without, only the result (no text is decoded before
    # the end unless a stop string needs it)
    stream: bool = True
