"""One model in one process, answering many requests with many adapters at once.

A single engine thread owns the model and runs every step. Requests wait in a queue; at every
step the thread admits the ones that fit (a batch row free, their cache blocks free, their
adapter loaded), prefills their prompts together, then decodes one token for every running row:
rows join and leave the batch at every step (continuous batching).

- The paged cache (:mod:`serving.kvcache`) is allocated once; a row holds all the blocks it can
  ever need from admission on, so nothing runs out of memory mid-answer.
- LoRA adapters sit in slots of one pool per projection (:mod:`serving.lora`): every row names
  its slot, and one pair of matrix products per projection serves all of them. P-Tuning v2
  prefixes are stored at the start of each row's cache, so both kinds share batches with the
  base model's rows.
- Adapters are read from disk on a loader thread, away from the step loop, and copied into a
  slot between steps; an LRU policy with a count and a byte limit unloads idle unpinned ones.
- On a GPU the decode step replays CUDA graphs (:mod:`serving.graphs`).

Callers are told of text deltas, the result and failures through a callback run on the engine
thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from serving.adapter_cache import NO_ADAPTER, AdapterCache, LoadedAdapter
from serving.adapters import AdapterError, AdapterSpec
from serving.batch import Batch, Row
from serving.commands import PENDING, Commands
from serving.errors import AdapterCacheFullError, EngineClosedError
from serving.events import Event
from serving.graphs import DecodeGraphs
from serving.kvcache import CacheCapacityError, KVCache
from serving.lora import LoraPool
from serving.model import Glm, PrefillRow
from serving.requests import Request
from serving.sampling import choose_tokens, make_generator
from serving.text import RowText, decoder
from trainer.modeling import check_model_dir, compute_dtype, load_model, load_tokenizer
from trainer.template import SpecialTokens

logger = logging.getLogger(__name__)

CPU_CACHE_BYTES = 256 * 1024**2
GPU_CACHE_SHARE = 0.6  # of the memory free once the model is loaded
GPU_RESERVE_BYTES = 2 * 1024**3  # graphs, prefill activations, logits


class Engine:
    """Serves a loaded model and any number of its adapters (:meth:`open` loads one).

    Args:
        model: a transformers GLM-4 causal LM, on its device.
        tokenizer: its tokenizer (GLM-4 special tokens).
        name: for logs and the thread's name.
        max_batch: rows decoded together.
        max_adapters: adapters kept loaded (pinned ones included), and LoRA pool slots; the
            least recently used idle unpinned one is unloaded to make room.
        max_adapter_bytes: a byte budget for loaded adapters (their weights on disk), or None.
        max_lora_rank: the largest LoRA rank served.
        cache_bytes: the paged cache's size; None: a share of the free GPU memory, or 256 MiB
            on the CPU.
        max_context: the most tokens one row may hold (prefix, prompt and answer).
        max_prefill_tokens: prompt tokens prefilled in one step (at least one row).
        cuda_graphs: replay the decode step as CUDA graphs (GPU only).
        fuse_qkv: make the model's q/k/v projections views of the engine's fused matrix; off,
            the engine keeps a copy and leaves the model's modules as they are.
        fused_ops: run the layers' elementwise work as fused Triton kernels (GPU only).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "model",
        max_batch: int = 16,
        max_adapters: int = 8,
        max_adapter_bytes: int | None = None,
        max_lora_rank: int = 64,
        cache_bytes: int | None = None,
        max_context: int = 16384,
        max_prefill_tokens: int = 8192,
        cuda_graphs: bool = True,
        fuse_qkv: bool = True,
        fused_ops: bool = True,
    ) -> None:
        self.name = name
        self.max_batch, self.max_adapters = max_batch, max_adapters
        self.max_adapter_bytes, self.max_prefill_tokens = max_adapter_bytes, max_prefill_tokens
        self.tokenizer = tokenizer
        self.decode = decoder(tokenizer)
        self.special = SpecialTokens.from_tokenizer(tokenizer)
        self.eos_ids = set(self.special.eos_ids)
        self.model: Any = model.eval()
        self.config = model.config
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.max_context = min(max_context, int(self.config.max_position_embeddings))
        shape = Glm.cache_shape(self.config)
        self.cache = KVCache.sized(
            shape,
            nbytes=cache_bytes or _default_cache_bytes(self.device),
            dtype=self.dtype,
            device=self.device,
        )
        self.lora = LoraPool(
            self.config,
            slots=max_adapters,
            max_rank=max_lora_rank,
            dtype=self.dtype,
            device=self.device,
        )
        self.glm = Glm(
            model,
            self.cache,
            self.lora,
            max_positions=self.max_context,
            fuse_qkv=fuse_qkv,
            fused_ops=fused_ops,
        )
        self.batch = Batch(
            max_rows=max_batch,
            max_blocks=self.cache.blocks_for(self.max_context),
            vocab=self.config.vocab_size,
            device=self.device,
        )
        self.graphs = DecodeGraphs(
            self.glm.decode,
            self.batch,
            enabled=cuda_graphs and self.device.type == "cuda" and self.glm.graphable,
        )
        self._waiting: deque[Request] = deque()
        self._wake = threading.Condition()
        self._commands = Commands(self._wake)
        self.adapters = AdapterCache(
            config=self.config,
            dtype=self.dtype,
            device=self.device,
            lora=self.lora,
            on_pool_change=self.graphs.invalidate_lora,
            lock=self._wake,
            max_adapters=max_adapters,
            max_adapter_bytes=max_adapter_bytes,
            name=name,
        )
        self._last_work = time.monotonic()
        self.steps = 0
        logger.info(
            "engine %s: cache of %d tokens (%.2f GiB), batch %d, %d adapter slots",
            name, self.cache.capacity_tokens, self.cache.nbytes / 1024**3, max_batch, max_adapters,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._run, name=f"engine:{name}", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, model_dir: Path, *, tokenizer_dir: Path | None = None, **limits: Any) -> Engine:
        """An engine for a model directory (on the GPU when there is one, in bf16).

        Args:
            model_dir: a base model or full-SFT checkpoint directory.
            tokenizer_dir: where the tokenizer is when ``model_dir`` has none (a full-SFT
                checkpoint's base model).
            limits: the keyword arguments of :class:`Engine`.
        """
        check_model_dir(model_dir)
        has_tokenizer = (model_dir / "tokenizer_config.json").is_file()
        tokenizer = load_tokenizer(model_dir if has_tokenizer else tokenizer_dir or model_dir)
        model = load_model(model_dir, dtype=compute_dtype())
        if torch.cuda.is_available():
            model = model.to("cuda")
        return cls(model, tokenizer, name=model_dir.name, **limits)

    # ---- caller side (any thread) -------------------------------------------------------

    def submit(self, request: Request) -> None:
        with self._wake:
            if self._commands.closed:
                raise EngineClosedError("the engine is closed")
            self._waiting.append(request)
            self._wake.notify()

    def load(self, spec: AdapterSpec, *, pin: bool | None = None) -> Future[LoadedAdapter]:
        """Load ``spec`` (a no-op when loaded); ``pin`` sets or clears its pin when given.

        The files are read at once, on the loader thread; the engine thread installs them
        between two steps."""
        future: Future[LoadedAdapter] = Future()
        with self._wake:
            if self._commands.closed:
                raise EngineClosedError("the engine is closed")
            if self.adapters.get(spec.name) is None:
                load = self.adapters.start(spec)
                load.futures.append(future)
                if pin is not None:
                    load.pin = pin
                return future

        def request() -> object:
            self.adapters.request(spec, pin, future)
            return PENDING

        self._commands.call(request)
        return future

    def unload(self, name: str) -> Future[bool]:
        """Unload ``name`` (pinned or not); False when it was not loaded."""
        return self._commands.call(lambda: self.adapters.unload(name))

    def warm(self, *, lora: bool = False) -> Future[float]:
        """Capture the decode step's graphs for every batch size now (with ``lora``: those
        of LoRA rows, for the adapters loaded) rather than at first use; the seconds taken."""

        def capture() -> float:
            started = time.perf_counter()
            self.graphs.warm(lora=lora)
            return time.perf_counter() - started

        return self._commands.call(capture)

    def loaded(self) -> dict[str, LoadedAdapter]:
        """A snapshot of the loaded adapters, least recently used first."""
        return self.adapters.snapshot()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        """Rows are being decoded."""
        return bool(self.batch.rows)

    @property
    def idle_s(self) -> float:
        """Seconds since the engine last had a request (0 while it has one)."""
        if self.batch.rows or self._waiting:
            return 0.0
        return time.monotonic() - self._last_work

    def capacity(self) -> dict[str, int]:
        """The cache and batch limits, and what is free now (nothing once closed)."""
        if self._commands.closed:
            return {}
        return {
            "cache_tokens": self.cache.capacity_tokens,
            "free_cache_tokens": self.cache.free_tokens,
            "max_batch": self.max_batch,
            "running": len(self.batch),
            "waiting": self.queued,
            "adapter_slots": self.max_adapters,
        }

    def close(self) -> None:
        """Fail what waits, stop the rows being decoded, and free the model."""
        self._commands.close()
        self._thread.join(timeout=60)
        self.adapters.close("the engine is closed")
        self.model = None
        # the forward, its graphs, the cache and the pool hold the GPU memory: let it go
        del self.graphs, self.glm, self.lora, self.cache
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (
                    self._waiting
                    or self._commands
                    or self._commands.closed
                    or self.batch.rows
                    or self.adapters.landed()
                ):
                    self._wake.wait()
                if self._commands.closed:
                    self._fail_all("the engine is shutting down")
                    return
            try:
                self._step()
            except Exception as exc:  # the thread must outlive any one failure
                logger.exception("engine %s: step failed", self.name)
                self._fail_rows(f"generation failed: {exc}")

    def _step(self) -> None:
        self._last_work = time.monotonic()
        self._commands.run()
        self._install_loads()
        admitted = self._admit()
        if admitted:
            self._prefill(admitted)
        if self.batch.rows:  # the rows just admitted take their second token here
            self._decode()
        elif not admitted and self._waiting and not self.batch.rows:
            with self._wake:  # everything waits for an adapter: sleep until a load lands
                if not self._commands and not self._commands.closed:
                    self._wake.wait(timeout=0.05)
        self.steps += 1

    # ---- admission and the two kinds of step ------------------------------------------

    def _admit(self) -> list[tuple[Row, PrefillRow]]:
        """Waiting requests that can start now, in arrival order, background ones last (one
        waiting for its adapter lets later ones pass; one waiting for cache blocks does not)."""
        admitted: list[tuple[Row, PrefillRow]] = []
        budget = self.max_prefill_tokens
        with self._wake:
            waiting = sorted(self._waiting, key=lambda r: r.background)  # stable: arrival order
        for request in waiting:
            if len(self.batch) + len(admitted) >= self.max_batch:
                break
            if request.cancelled:
                self._drop(request)
                continue
            adapter = self._adapter_for(request)
            if adapter is None:
                continue
            prefix = adapter.prefix
            tokens = (len(prefix[0][0]) if prefix else 0) + len(request.prompt)
            if admitted and tokens > budget:
                break
            needed = tokens + request.params.max_new_tokens
            try:
                if needed > self.max_context:
                    raise CacheCapacityError(
                        f"the request needs {needed} tokens of context (prefix, prompt and "
                        f"max_new_tokens); this engine serves {self.max_context}"
                    )
                blocks = self.cache.allocate(needed)
            except CacheCapacityError as exc:
                self._drop(request, Event("error", message=str(exc), code="capacity"))
                continue
            if blocks is None:
                break
            budget -= tokens
            with self._wake:
                self._waiting.remove(request)
            row = Row(
                request=request,
                blocks=blocks,
                text=RowText(self.decode, request.params.stop, live=request.stream),
                generator=make_generator(request.params, self.device),
                prompt_tokens=len(request.prompt),
                lora_slot=adapter.slot,
            )
            if row.adapter:
                self.adapters.use(row.adapter)
            admitted.append((row, PrefillRow(request.prompt, blocks, adapter.slot, prefix)))
        return admitted

    def _adapter_for(self, request: Request) -> LoadedAdapter | None:
        """The request's loaded adapter (``NO_ADAPTER`` without one), or None while it loads."""
        spec = request.adapter
        if spec is None:
            return NO_ADAPTER
        loaded = self.adapters.get(spec.name)
        if loaded is None:
            self.adapters.start(spec)
        return loaded

    def _prefill(self, admitted: list[tuple[Row, PrefillRow]]) -> None:
        start = len(self.batch)
        for row, prefill in admitted:
            self.batch.add(row, seen=prefill.tokens)
        with torch.inference_mode():
            logits = self.glm.prefill([p for _, p in admitted])
        end = start + len(admitted)
        for position, (_, prefill) in enumerate(admitted, start):
            self.batch.positions[position] = prefill.prefix_length + len(prefill.tokens)
        self._accept(logits, start, end)

    def _decode(self) -> None:
        rows = len(self.batch)
        logits = self.graphs(rows, lora=self.batch.uses_lora)
        self.batch.positions[:rows] += 1
        self._accept(logits, 0, rows)

    def _accept(self, logits: torch.Tensor, start: int, end: int) -> None:
        """Choose the next token of rows ``start:end`` from their ``logits``; stream, finish
        and remove rows."""
        rows = self.batch.rows[start:end]
        with torch.inference_mode():
            tokens = choose_tokens(
                logits,
                self.batch.seen[start:end],
                [r.request.params for r in rows],
                [r.generator for r in rows],
            )
            index = torch.arange(start, end, device=self.device)
            self.batch.seen[index, tokens] = True
            self.batch.tokens[start:end] = tokens
        now = time.monotonic()
        finished = []
        for offset, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            if not row.text.ids and not row.first_token:
                row.first_token = now
            if self._advance(row, token):
                finished.append(start + offset)
        if finished:  # freed before their callers hear of it
            for row in self.batch.remove(finished):
                self._release(row)
                if row.finish != "cancelled":
                    row.request.on_event(Event("done", result=row.result()))

    def _advance(self, row: Row, token: int) -> bool:
        """Add ``token`` to ``row``; stream what is final of its text; True when it ends (the
        caller removes the row, then tells it ``done``)."""
        request = row.request
        if request.cancelled:
            row.finish = "cancelled"
            return True
        if token in self.eos_ids:
            row.finish = "stop"
        else:
            row.text.add(token)
            if row.text.stopped:
                row.finish = "stop"
            elif len(row.text.ids) >= request.params.max_new_tokens:
                row.finish = "length"
        final = row.finish is not None
        if final:
            row.text.finish()
        piece = row.text.delta(final) if request.stream else ""
        if piece:
            request.on_event(Event("delta", text=piece))
        return final

    def _release(self, row: Row) -> None:
        self.cache.release(row.blocks)
        if row.adapter:
            self.adapters.release(row.adapter)

    def _drop(self, request: Request, event: Event | None = None) -> None:
        with self._wake:
            if request in self._waiting:
                self._waiting.remove(request)
        if event is not None:
            request.on_event(event)

    def _install_loads(self) -> None:
        for load, exc in self.adapters.install_ready():
            capacity = isinstance(exc, AdapterCacheFullError)
            if not capacity and not isinstance(exc, AdapterError):
                logger.exception("could not load adapter %s", load.spec.name, exc_info=exc)
            message = str(exc) if capacity else f"could not load the adapter: {exc}"
            event = Event("error", message=message, code="capacity" if capacity else "failed")
            with self._wake:
                name = load.spec.name
                waiting = [r for r in self._waiting if r.adapter and r.adapter.name == name]
            for request in waiting:
                self._drop(request, event)

    # ---- failures ---------------------------------------------------------------------------

    def _fail_rows(self, message: str) -> None:
        rows = self.batch.remove(list(range(len(self.batch))))
        for row in rows:
            self._release(row)
            row.request.on_event(Event("error", message=message))

    def _fail_all(self, message: str) -> None:
        self._fail_rows(message)
        for request in self._waiting:
            request.on_event(Event("error", message=message))
        self._waiting.clear()
        self._commands.fail(message)


def _default_cache_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return CPU_CACHE_BYTES
    free, _ = torch.cuda.mem_get_info(device)
    return max(int((free - GPU_RESERVE_BYTES) * GPU_CACHE_SHARE), 64 * 1024**2)
