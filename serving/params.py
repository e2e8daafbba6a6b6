"""Per-request generation parameters (torch-free: the API builds them without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationParams:
    """How one request samples (the upstream inference defaults: temperature 0.8, top_p 0.8,
    repetition_penalty 1.2). ``temperature == 0`` is greedy decoding."""

    max_new_tokens: int = 1024
    temperature: float = 0.8
    top_p: float = 0.8
    repetition_penalty: float = 1.2
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
