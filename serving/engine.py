"""One base model in one process, answering many requests with many adapters.

A single engine thread owns the model: it loads and unloads adapters and runs every forward pass,
so no request can see another's adapter (PEFT's ``set_adapter`` is global; this code never calls
it). Requests wait in a queue; the thread takes a batch of them and decodes it step by step:

- LoRA rows and base rows share a batch, each row naming its adapter (PEFT's mixed-adapter
  batches, ``adapter_names=[...]``; ``__base__`` is the base model);
- P-Tuning v2 rows batch with rows of the same prefix, whose keys and values start the cache.

Adapters load on first use into an LRU cache with a count and a byte limit; pinned ones stay.
Loads and unloads asked for while a batch runs happen between its decode steps. Callers are
told of text deltas, the result and failures through a callback run on the engine thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import DynamicCache

from serving.adapters import AdapterSpec, Prefix, load_prefix
from serving.decoding import Row, decode_batch
from serving.events import Event
from serving.sampling import GenerationParams
from trainer.modeling import check_model_dir, compute_dtype, load_model, load_tokenizer
from trainer.template import SpecialTokens

logger = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class Request:
    prompt: list[int]
    params: GenerationParams
    on_event: Callable[[Event], None]
    adapter: AdapterSpec | None = None
    cancelled: bool = False  # set by the caller (a client went away): the row stops
    submitted: float = field(default_factory=time.monotonic)

    @property
    def lora_name(self) -> str | None:
        return self.adapter.name if self.adapter and self.adapter.kind == "lora" else None

    def is_cancelled(self) -> bool:
        return self.cancelled


@dataclass
class LoadedAdapter:
    spec: AdapterSpec
    nbytes: int
    pinned: bool = False
    load_ms: float = 0.0
    prefix: Prefix | None = None


class EngineClosedError(RuntimeError):
    pass


class AdapterCacheFullError(RuntimeError):
    pass


class AdapterBusyError(RuntimeError):
    pass


class Engine:
    """Serves a loaded model and any number of its adapters (:meth:`open` loads one).

    Args:
        model: a transformers causal LM, on its device.
        tokenizer: its tokenizer (GLM-4 special tokens).
        name: for logs and the thread's name.
        max_batch: rows decoded together.
        max_adapters: adapters kept loaded (pinned ones included); the least recently used
            unpinned one is unloaded to make room.
        max_adapter_bytes: a byte budget for loaded adapters (their weights on disk), or None.
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
    ) -> None:
        self.name = name
        self.max_batch = max_batch
        self.max_adapters = max_adapters
        self.max_adapter_bytes = max_adapter_bytes
        self.tokenizer = tokenizer
        self.special = SpecialTokens.from_tokenizer(tokenizer)
        self.model: Any = model.eval()
        self.peft: PeftModel | None = None
        self.config = model.config
        self.device = next(model.parameters()).device
        self.adapters: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._waiting: deque[Request] = deque()
        self._commands: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._busy: set[str] = set()  # adapters of the batch being decoded
        self._decoding = False
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"engine:{name}", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, model_dir: Path, *, tokenizer_dir: Path | None = None, **limits: Any) -> Engine:
        """An engine for a model directory (on the GPU when there is one, in bf16).

        Args:
            model_dir: a base model or full-SFT checkpoint directory.
            tokenizer_dir: where the tokenizer is when ``model_dir`` has none (a full-SFT
                checkpoint's base model).
            limits: ``max_batch``, ``max_adapters``, ``max_adapter_bytes``.
        """
        check_model_dir(model_dir)
        has_tokenizer = (model_dir / "tokenizer_config.json").is_file()
        tokenizer = load_tokenizer(model_dir if has_tokenizer else tokenizer_dir or model_dir)
        model = load_model(model_dir, dtype=compute_dtype(), use_cache=True)
        if torch.cuda.is_available():
            model = model.to("cuda")
        return cls(model, tokenizer, name=model_dir.name, **limits)

    # ---- caller side (any thread) -------------------------------------------------------

    def submit(self, request: Request) -> None:
        with self._wake:
            if self._closed:
                raise EngineClosedError("the engine is closed")
            self._waiting.append(request)
            self._wake.notify()

    def load(self, spec: AdapterSpec, *, pin: bool | None = None) -> Future[LoadedAdapter]:
        """Load ``spec`` (a no-op when loaded); ``pin`` sets or clears its pin when given."""
        return self._call(lambda: self._ensure(spec, pin=pin, keep=set()))

    def unload(self, name: str) -> Future[bool]:
        """Unload ``name`` (pinned or not); False when it was not loaded."""
        return self._call(lambda: self._unload(name))

    def loaded(self) -> dict[str, LoadedAdapter]:
        """A snapshot of the loaded adapters, least recently used first."""
        with self._wake:
            return dict(self.adapters)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        """A batch is being decoded."""
        return self._decoding

    def close(self) -> None:
        """Fail what waits, finish the batch being decoded, and free the model."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=60)
        self.adapters.clear()
        if self.peft is not None:  # the caller's model back as it came, without LoRA layers
            self.peft.base_model.unload()
        self.model = self.peft = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _call(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._wake:
            if self._closed:
                raise EngineClosedError("the engine is closed")
            self._commands.append((fn, future))
            self._wake.notify()
        return future

    # ---- engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._waiting or self._commands or self._closed):
                    self._wake.wait()
                if self._closed:
                    self._fail_all("the engine is shutting down")
                    return
            try:
                self._run_commands()
                batch = self._next_batch()
                if batch:
                    self._decode(batch)
            except Exception:  # the thread must outlive any one failure, or every caller hangs
                logger.exception("chat engine %s: unexpected error", self.name)

    def _run_commands(self) -> None:
        while True:
            with self._wake:
                if not self._commands:
                    return
                fn, future = self._commands.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as exc:  # reported to the caller, the engine goes on
                future.set_exception(exc)

    def _next_batch(self) -> list[Request]:
        """The oldest waiting request and the ones that can share its batch."""
        with self._wake:
            if not self._waiting:
                return []
            first = self._waiting[0]
            prefix = _prefix_name(first.adapter)
            batch: list[Request] = []
            names: set[str] = set()
            for request in list(self._waiting):
                if len(batch) == self.max_batch:
                    break
                spec = request.adapter
                if _prefix_name(spec) != prefix:
                    continue
                if spec is not None and spec.name not in names:
                    if len(names) == self.max_adapters:
                        continue  # no room to hold one more adapter for this batch
                    names.add(spec.name)
                batch.append(request)
            for request in batch:
                self._waiting.remove(request)
        ready = []
        for request in batch:
            if request.adapter is None:
                ready.append(request)
                continue
            try:
                self._ensure(request.adapter, pin=None, keep=names)
            except AdapterCacheFullError as exc:
                request.on_event(Event("error", message=str(exc), code="capacity"))
                continue
            except Exception as exc:
                logger.exception("could not load adapter %s", request.adapter.name)
                request.on_event(Event("error", message=f"could not load the adapter: {exc}"))
                continue
            ready.append(request)
        return ready

    def _decode(self, batch: list[Request]) -> None:
        names = {r.adapter.name for r in batch if r.adapter is not None}
        self._busy, self._decoding = names, True
        try:
            first = batch[0].adapter
            loaded = self.adapters.get(first.name) if first is not None else None
            prefix = loaded.prefix if loaded is not None else None
            rows = [
                Row(
                    request.prompt,
                    request.params,
                    adapter=request.lora_name or BASE,
                    on_event=request.on_event,
                    is_cancelled=request.is_cancelled,
                    submitted=request.submitted,
                )
                for request in batch
            ]
            decode_batch(
                self._forward,
                rows,
                tokenizer=self.tokenizer,
                eos_ids=set(self.special.eos_ids),
                pad_id=self.special.endoftext,
                vocab_size=self.config.vocab_size,
                device=self.device,
                cache=self._new_cache(prefix, len(rows)),
                prefix_length=prefix.length if prefix else 0,
                between_steps=self._run_commands,
            )
        except Exception as exc:  # one failed batch fails its requests, not the engine
            logger.exception("generation failed")
            for request in batch:
                request.on_event(Event("error", message=f"generation failed: {exc}"))
        finally:
            self._busy, self._decoding = set(), False

    def _forward(self, adapter_names: list[str], **inputs: Any) -> torch.Tensor:
        with torch.inference_mode():
            if self.peft is not None:
                out = self.peft(**inputs, adapter_names=adapter_names, logits_to_keep=1)
            else:
                out = self.model(**inputs, logits_to_keep=1)
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def _new_cache(self, prefix: Prefix | None, rows: int) -> DynamicCache:
        cache = DynamicCache(config=self.config)
        if prefix is not None:
            for layer, (keys, values) in enumerate(prefix.layers):
                cache.update(
                    keys.expand(rows, -1, -1, -1).contiguous(),
                    values.expand(rows, -1, -1, -1).contiguous(),
                    layer,
                )
        return cache

    def _ensure(self, spec: AdapterSpec, *, pin: bool | None, keep: set[str]) -> LoadedAdapter:
        with self._wake:
            loaded = self.adapters.get(spec.name)
        if loaded is None:
            nbytes = _disk_bytes(spec.path)
            self._make_room(nbytes, keep=keep | {spec.name})
            loaded = self._load(spec, nbytes)
        with self._wake:
            self.adapters[spec.name] = loaded
            self.adapters.move_to_end(spec.name)
            if pin is not None:
                loaded.pinned = pin
        return loaded

    def _load(self, spec: AdapterSpec, nbytes: int) -> LoadedAdapter:
        started = time.perf_counter()
        prefix = None
        if spec.kind == "prefix":
            dtype = next(self.model.parameters()).dtype
            prefix = load_prefix(spec.path, self.config, device=self.device, dtype=dtype)
        elif self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, spec.path, adapter_name=spec.name)
            self.peft.eval()
        else:
            self.peft.load_adapter(spec.path, adapter_name=spec.name)
            self.peft.eval()
        load_ms = (time.perf_counter() - started) * 1000
        logger.info("loaded adapter %s (%s) in %.0f ms", spec.name, spec.kind, load_ms)
        return LoadedAdapter(spec, nbytes, load_ms=load_ms, prefix=prefix)

    def _make_room(self, nbytes: int, *, keep: set[str]) -> None:
        def full() -> bool:
            used = sum(a.nbytes for a in self.adapters.values()) + nbytes
            budget = self.max_adapter_bytes
            return len(self.adapters) >= self.max_adapters or (budget is not None and used > budget)

        for name, adapter in list(self.adapters.items()):  # least recently used first
            if not full():
                return
            if adapter.pinned or name in keep or name in self._busy:
                continue
            self._unload(name)
        if full():
            raise AdapterCacheFullError(
                f"no room for another adapter: {len(self.adapters)} loaded "
                f"(limit {self.max_adapters}), all pinned or in use"
            )

    def _unload(self, name: str) -> bool:
        if name in self._busy:
            raise AdapterBusyError(f"adapter {name} is answering requests; unload it after them")
        with self._wake:
            adapter = self.adapters.pop(name, None)
        if adapter is None:
            return False
        if adapter.spec.kind == "lora" and self.peft is not None:
            if len(self.peft.peft_config) == 1:  # the last one: take the LoRA layers out
                self.model = self.peft.base_model.unload()
                self.peft = None
            else:
                self.peft.delete_adapter(name)
        adapter.prefix = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        logger.info("unloaded adapter %s", name)
        return True

    def _fail_all(self, message: str) -> None:
        for request in self._waiting:
            request.on_event(Event("error", message=message))
        self._waiting.clear()
        for _, future in self._commands:
            future.set_exception(EngineClosedError(message))
        self._commands.clear()


def _prefix_name(spec: AdapterSpec | None) -> str | None:
    return spec.name if spec is not None and spec.kind == "prefix" else None


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("adapter_model.*"))
