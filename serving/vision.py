"""A chat engine for one vision model (``Glm4vForConditionalGeneration``) in one process.

Simple on purpose: a single engine thread owns the model and answers one request at a time
with transformers' ``generate`` (the image's features enter the prompt in its prefill). LoRA
adapters load on first use by name into an LRU cache (count and byte limits, pins), as the
text engine's do; the thread activates the request's adapter before generating (PEFT's
``set_adapter``, or the adapters disabled for the base model), so exactly one adapter is active
for each request and no other thread ever touches the model. It speaks the text engine's
interface (``submit``, ``load``, ``unload``, ``loaded``, ``queued``, ``busy``, ``close``) and
its events (:mod:`serving.events`).
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
from transformers import StoppingCriteriaList

from serving.adapter_cache import LoadedAdapter
from serving.adapters import AdapterSpec
from serving.commands import Commands
from serving.errors import AdapterBusyError, AdapterCacheFullError, EngineClosedError
from serving.events import Event, FinishReason, Result
from serving.params import GenerationParams
from serving.vision_stream import TextDeltas
from trainer.modeling import (
    UnsupportedModelError,
    check_model_dir,
    compute_dtype,
    load_model,
    load_tokenizer,
)
from trainer.template import SpecialTokens
from trainer.vision import is_remote_code_vision
from trainer.vision_data import ImageTokens

logger = logging.getLogger(__name__)


@dataclass
class VisionPrompt:
    """Token ids with the image's placeholders expanded, and the image's tensors (or None)."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class VisionRequest:
    prompt: VisionPrompt
    params: GenerationParams
    on_event: Callable[[Event], None]
    adapter: AdapterSpec | None = None
    cancelled: bool = False  # set by the caller (a client went away): generation stops
    submitted: float = field(default_factory=time.monotonic)


class VisionEngine:
    """Serves a loaded vision model and its LoRA adapters (:meth:`open` loads one)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        images: ImageTokens,
        *,
        name: str = "model",
        max_adapters: int = 8,
        max_adapter_bytes: int | None = None,
    ) -> None:
        self.name = name
        self.max_adapters = max_adapters
        self.max_adapter_bytes = max_adapter_bytes
        self.tokenizer = tokenizer
        self.images = images
        self.special = SpecialTokens.from_tokenizer(tokenizer)
        self.model: Any = model.eval()
        self.peft: PeftModel | None = None
        self.config = model.config.text_config  # max_position_embeddings, vocab_size
        self.device = next(model.parameters()).device
        self.adapters: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._waiting: deque[VisionRequest] = deque()
        self._active: str | None = None  # the adapter of the request being answered
        self._wake = threading.Condition()
        self._commands = Commands(self._wake)
        self._last_work = time.monotonic()
        self.name = name
        self._thread = threading.Thread(target=self._run, name=f"vision:{name}", daemon=True)
        self._thread.start()

    @classmethod
    def open(
        cls,
        model_dir: Path,
        *,
        tokenizer_dir: Path | None = None,
        trust_remote_code: bool = False,
        **limits: Any,
    ) -> VisionEngine:
        """An engine for a vision model directory (a base, or a full-SFT checkpoint whose
        tokenizer and image processor are its base's, ``tokenizer_dir``)."""
        if is_remote_code_vision(check_model_dir(model_dir, trust_remote_code=trust_remote_code)):
            raise UnsupportedModelError(
                f"{model_dir} is GLM-4V-9B's remote-code layout, which is not served; "
                "serve the native GLM-4.1V-9B"
            )
        assets = model_dir if (model_dir / "tokenizer_config.json").is_file() else tokenizer_dir
        assets = assets or model_dir
        tokenizer = load_tokenizer(assets, trust_remote_code=trust_remote_code)
        processor_dir = model_dir if (model_dir / "preprocessor_config.json").is_file() else assets
        images = ImageTokens.load(processor_dir, tokenizer)
        model = load_model(
            model_dir, dtype=compute_dtype(), use_cache=True, trust_remote_code=trust_remote_code
        )
        if torch.cuda.is_available():
            model = model.to("cuda")
        return cls(model, tokenizer, images, name=model_dir.name, **limits)

    # ---- caller side (any thread) -------------------------------------------------------

    def prompt(self, ids: list[int], image: Any | None) -> VisionPrompt:
        """The prompt of rendered ``ids`` (one ``<|image|>`` placeholder when ``image``)."""
        if image is None:
            return VisionPrompt(ids)
        pixels = self.images.pixels(image)
        count = int(pixels["image_grid_thw"].prod()) // self.images.merge
        expanded, _ = self.images.expand(ids, None, count)
        return VisionPrompt(expanded, pixels["pixel_values"], pixels["image_grid_thw"])

    def submit(self, request: VisionRequest) -> None:
        with self._wake:
            if self._commands.closed:
                raise EngineClosedError("the engine is closed")
            self._waiting.append(request)
            self._wake.notify()

    def load(self, spec: AdapterSpec, *, pin: bool | None = None) -> Future[LoadedAdapter]:
        """Load ``spec`` (a no-op when loaded); ``pin`` sets or clears its pin when given."""
        return self._commands.call(lambda: self._ensure(spec, pin=pin))

    def unload(self, name: str) -> Future[bool]:
        return self._commands.call(lambda: self._unload(name))

    def loaded(self) -> dict[str, LoadedAdapter]:
        with self._wake:
            return dict(self.adapters)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return self._active is not None

    @property
    def idle_s(self) -> float:
        """Seconds since the engine last had a request (0 while it has one)."""
        if self._waiting or self._active is not None:
            return 0.0
        return time.monotonic() - self._last_work

    def capacity(self) -> dict[str, int]:
        """Its rows: one at a time (it has no paged cache)."""
        return {"max_batch": 1, "running": int(self.busy), "waiting": self.queued}

    def close(self) -> None:
        self._commands.close()
        self._thread.join(timeout=60)
        self.adapters.clear()
        self.model = self.peft = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._waiting or self._commands or self._commands.closed):
                    self._wake.wait()
                if self._commands.closed:
                    self._fail_all("the engine is shutting down")
                    return
                request = self._waiting.popleft() if self._waiting else None
            self._commands.run()
            if request is not None and not request.cancelled:
                self._answer(request)
            self._last_work = time.monotonic()

    def _answer(self, request: VisionRequest) -> None:
        started = time.perf_counter()
        queued_ms = (time.monotonic() - request.submitted) * 1000
        try:
            if request.adapter is not None:
                self._ensure(request.adapter, pin=None)
        except AdapterCacheFullError as exc:
            request.on_event(Event("error", message=str(exc), code="capacity"))
            return
        except Exception as exc:
            logger.exception("could not load adapter %s", request.adapter)
            request.on_event(Event("error", message=f"could not load the adapter: {exc}"))
            return
        self._active = request.adapter.name if request.adapter else "__base__"
        try:
            deltas, generated = self._generate(request)
        except Exception as exc:  # one failed request fails alone, not the engine
            logger.exception("vision generation failed")
            request.on_event(Event("error", message=f"generation failed: {exc}"))
            return
        finally:
            self._active = None
        deltas.end()
        done = time.perf_counter()
        first = deltas.first_token_at or done
        new_tokens = len(deltas.ids)
        finish: FinishReason = "stop"
        if request.cancelled:
            finish = "cancelled"
        elif deltas.stopped or (generated and generated[-1] in self.special.eos_ids):
            finish = "stop"
        elif new_tokens >= request.params.max_new_tokens:
            finish = "length"
        request.on_event(
            Event(
                "done",
                result=Result(
                    text=deltas.text,
                    finish_reason=finish,
                    prompt_tokens=len(request.prompt),
                    completion_tokens=new_tokens,
                    timings={
                        "queue_ms": queued_ms,
                        "prefill_ms": (first - started) * 1000,
                        "total_ms": queued_ms + (done - started) * 1000,
                        "tokens_per_second": (new_tokens - 1) / (done - first)
                        if new_tokens > 1 and done > first
                        else 0.0,
                    },
                ),
            )
        )

    def _generate(self, request: VisionRequest) -> tuple[TextDeltas, list[int]]:
        prompt, params = request.prompt, request.params
        ids = torch.tensor([prompt.input_ids], device=self.device)
        inputs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": (ids == self.images.image_token).int(),
        }
        if prompt.pixel_values is not None:
            inputs["pixel_values"] = prompt.pixel_values.to(self.device)
            inputs["image_grid_thw"] = prompt.image_grid_thw
        sampling: dict[str, Any] = {"do_sample": False}
        if not params.greedy:
            sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
            if params.seed is not None:
                torch.manual_seed(params.seed)  # this thread is the model's only user
        deltas = TextDeltas(self.tokenizer, request)
        options = {
            **inputs,
            **sampling,
            "max_new_tokens": params.max_new_tokens,
            "repetition_penalty": params.repetition_penalty,
            "eos_token_id": self.special.eos_ids,
            "pad_token_id": self.special.endoftext,
            "streamer": deltas,
            "stopping_criteria": StoppingCriteriaList([deltas]),
        }
        with torch.inference_mode():
            if self.peft is None:
                output = self.model.generate(**options)
            elif request.adapter is None:
                with self.peft.disable_adapter():
                    output = self.peft.generate(**options)
            else:
                self.peft.set_adapter(request.adapter.name)  # only this thread runs the model
                output = self.peft.generate(**options)
        return deltas, [int(t) for t in output[0, ids.shape[1] :].tolist()]

    def _ensure(self, spec: AdapterSpec, *, pin: bool | None) -> LoadedAdapter:
        if spec.kind != "lora":
            raise ValueError(f"{spec.name}: only LoRA adapters are served for vision models")
        with self._wake:
            loaded = self.adapters.get(spec.name)
        if loaded is None:
            nbytes = sum(f.stat().st_size for f in spec.path.glob("adapter_model.*"))
            self._make_room(nbytes, keep=spec.name)
            started = time.perf_counter()
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, spec.path, adapter_name=spec.name)
            else:
                self.peft.load_adapter(spec.path, adapter_name=spec.name)
            self.peft.eval()
            load_ms = (time.perf_counter() - started) * 1000
            loaded = LoadedAdapter(spec, nbytes, load_ms=load_ms)
            logger.info("loaded vision adapter %s in %.0f ms", spec.name, load_ms)
        with self._wake:
            self.adapters[spec.name] = loaded
            self.adapters.move_to_end(spec.name)
            if pin is not None:
                loaded.pinned = pin
        return loaded

    def _make_room(self, nbytes: int, *, keep: str) -> None:
        def full() -> bool:
            used = sum(a.nbytes for a in self.adapters.values()) + nbytes
            budget = self.max_adapter_bytes
            return len(self.adapters) >= self.max_adapters or (budget is not None and used > budget)

        for name, adapter in list(self.adapters.items()):  # least recently used first
            if not full():
                return
            if not adapter.pinned and name != keep and name != self._active:
                self._unload(name)
        if full():
            raise AdapterCacheFullError(
                f"no room for another adapter: {len(self.adapters)} loaded "
                f"(limit {self.max_adapters}), all pinned or in use"
            )

    def _unload(self, name: str) -> bool:
        if name == self._active:
            raise AdapterBusyError(f"adapter {name} is answering a request; unload it after it")
        with self._wake:
            adapter = self.adapters.pop(name, None)
        if adapter is None:
            return False
        if self.peft is not None:
            if len(self.peft.peft_config) == 1:  # the last one: take the LoRA layers out
                self.model = self.peft.base_model.unload()
                self.peft = None
            else:
                self.peft.delete_adapter(name)
        logger.info("unloaded vision adapter %s", name)
        return True

    def _fail_all(self, message: str) -> None:
        for request in self._waiting:
            request.on_event(Event("error", message=message))
        self._waiting.clear()
        self._commands.fail(message)
