"""Text deltas of one ``generate`` call, streamed as the tokens come, and the stopping
criterion that ends it on a stop string or when the caller cancels."""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from serving.events import Event


class TextDeltas(BaseStreamer, StoppingCriteria):
    """Streams text deltas of one generation and stops it on a stop string or a cancel."""

    def __init__(self, tokenizer: Any, request: Any) -> None:
        self.tokenizer = tokenizer
        self.request = request
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False
        self.first_token_at: float | None = None
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() hands over the prompt first
            self._prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.ids += [int(t) for t in value.reshape(-1).tolist()]
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        for stop in self.request.params.stop:
            at = text.find(stop)
            if stop and at >= 0:
                text, self.stopped = text[:at], True
        self.text = text
        ready = len(text) if self.stopped else len(text.rstrip("\ufffd"))  # whole characters
        if ready > self.sent:
            self.request.on_event(Event("delta", text=text[self.sent : ready]))
            self.sent = ready

    def end(self) -> None:
        if len(self.text) > self.sent:
            self.request.on_event(Event("delta", text=self.text[self.sent :]))
            self.sent = len(self.text)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:  # noqa: ARG002
        done = self.stopped or self.request.cancelled
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)
