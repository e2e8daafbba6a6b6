"""The running batch: the rows being decoded and the device buffers a decode step reads.

Row ``i`` of the batch owns index ``i`` of every buffer: its last token, that token's cache
index, its block table, its LoRA slot and the tokens it has seen (for the repetition penalty).
Rows are kept contiguous: when one leaves, the last row moves into its place, so a decode step
always runs on the first ``len(rows)`` entries (padded to a captured batch size with rows that
write to the scratch block and are thrown away).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from serving.events import FinishReason, Result
from serving.text import RowText

if TYPE_CHECKING:
    from serving.requests import Request


@dataclass
class Row:
    request: Request
    blocks: list[int]
    text: RowText
    generator: torch.Generator | None
    prompt_tokens: int
    lora_slot: int = -1
    admitted: float = field(default_factory=time.monotonic)
    first_token: float = 0.0
    finish: FinishReason | None = None

    @property
    def adapter(self) -> str | None:
        return self.request.adapter.name if self.request.adapter else None

    def result(self) -> Result:
        end = time.monotonic()
        generated = len(self.text.ids)
        return Result(
            text=self.text.text,
            finish_reason=self.finish or "stop",
            prompt_tokens=self.prompt_tokens,
            completion_tokens=generated,
            timings={
                "queue_ms": (self.admitted - self.request.submitted) * 1000,
                "prefill_ms": (self.first_token - self.admitted) * 1000,
                "total_ms": (end - self.request.submitted) * 1000,
                "tokens_per_second": generated / max(end - self.first_token, 1e-9),
            },
            token_ids=tuple(self.text.ids),
        )


class Batch:
    """At most ``max_rows`` rows and their buffers on ``device``."""

    def __init__(self, *, max_rows: int, max_blocks: int, vocab: int, device: torch.device):
        self.max_rows = max_rows
        self.tokens = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.tables = torch.zeros(max_rows, max_blocks, dtype=torch.int32, device=device)
        self.lora_slots = torch.full((max_rows,), -1, dtype=torch.long, device=device)
        self.seen = torch.zeros(max_rows, vocab, dtype=torch.bool, device=device)
        self.rows: list[Row] = []
        self._lora_rows = 0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def free(self) -> int:
        return self.max_rows - len(self.rows)

    @property
    def uses_lora(self) -> bool:
        return self._lora_rows > 0

    def add(self, row: Row, *, seen: list[int]) -> int:
        """Append ``row``; its buffers get its block table, LoRA slot and ``seen`` tokens."""
        index = len(self.rows)
        self.rows.append(row)
        self.tables[index, : len(row.blocks)] = torch.tensor(row.blocks, dtype=torch.int32)
        self.lora_slots[index] = row.lora_slot
        self.seen[index, seen] = True
        self._lora_rows += row.lora_slot >= 0
        return index

    def remove(self, indices: list[int]) -> list[Row]:
        """Take the rows at ``indices`` out, moving the last rows into their places."""
        gone = []
        for index in sorted(indices, reverse=True):
            last = len(self.rows) - 1
            row = self.rows[index]
            self._lora_rows -= row.lora_slot >= 0
            if index != last:
                self.rows[index] = self.rows[last]
                for buffer in (self.tokens, self.positions, self.tables, self.lora_slots):
                    buffer[index] = buffer[last]
                self.seen[index] = self.seen[last]
            self.rows.pop()
            self._reset(last)
            gone.append(row)
        return gone

    def _reset(self, index: int) -> None:
        self.tokens[index] = 0
        self.positions[index] = 0
        self.tables[index] = 0
        self.lora_slots[index] = -1
        self.seen[index] = False
