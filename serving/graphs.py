"""The decode step as CUDA graphs, one per batch size bucket (and with or without LoRA).

A decode step of a 40-layer model launches over a thousand small kernels; eagerly, launching
them takes longer than running them. A captured graph replays them with one launch. Graphs read
the batch's buffers (:class:`serving.batch.Batch`) and write their logits to a buffer of their
own; a step of ``n`` rows replays the smallest bucket of at least ``n`` rows. Graphs are
captured on first use; reallocating the LoRA pool (a new projection kind or a larger rank)
drops the LoRA ones. Without CUDA the step runs eagerly, the same code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from serving.batch import Batch

logger = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def buckets_for(max_rows: int) -> list[int]:
    sizes = [b for b in BUCKETS if b < max_rows]
    return [*sizes, max_rows]


class DecodeGraphs:
    """Runs ``step(tokens, positions, tables, lora_slots)`` over the first rows of ``batch``.

    Args:
        step: the model's decode forward (:meth:`serving.model.Glm.decode`).
        batch: whose buffers the step reads.
        enabled: capture graphs (a CUDA device); otherwise every step runs eagerly.
    """

    def __init__(self, step: Step, batch: Batch, *, enabled: bool) -> None:
        self.step, self.batch, self.enabled = step, batch, enabled
        self.buckets = buckets_for(batch.max_rows)
        self._graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if enabled else None
        self.capture_s = 0.0

    def __call__(self, rows: int, *, lora: bool) -> torch.Tensor:
        """Logits ``(rows, vocab)`` of the next token of the first ``rows`` rows."""
        if not self.enabled:
            return self._eager(rows, lora)
        size = next(b for b in self.buckets if b >= rows)
        graph = self._graphs.get((size, lora))
        if graph is None:
            graph = self._capture(size, lora)
        graph[0].replay()
        return graph[1][:rows]

    def invalidate_lora(self) -> None:
        """Drop the graphs that read the LoRA pool (its tensors were reallocated)."""
        for key in [k for k in self._graphs if k[1]]:
            del self._graphs[key]

    def warm(self, *, lora: bool = False) -> None:
        """Capture every bucket now, largest first (they share one memory pool)."""
        if self.enabled:
            for size in reversed(self.buckets):
                if (size, lora) not in self._graphs:
                    self._capture(size, lora)

    def _inputs(
        self, rows: int, lora: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        b = self.batch
        slots = b.lora_slots[:rows] if lora else None
        return b.tokens[:rows], b.positions[:rows], b.tables[:rows], slots

    def _eager(self, rows: int, lora: bool) -> torch.Tensor:
        with torch.inference_mode():
            return self.step(*self._inputs(rows, lora))

    def _capture(self, size: int, lora: bool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        started = time.perf_counter()
        inputs = self._inputs(size, lora)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # compile kernels, settle allocations
                self.step(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
            logits = self.step(*inputs)
        self._graphs[(size, lora)] = (graph, logits)
        elapsed = time.perf_counter() - started
        self.capture_s += elapsed
        logger.info("captured the decode step for %d rows (lora %s) in %.2f s", size, lora, elapsed)
        return graph, logits
