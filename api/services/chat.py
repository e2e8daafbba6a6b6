"""Chat: resolve what the caller named to a model directory and adapter (through the registry,
never a path in ``adapter_config.json``), check the messages, and run the request on this
process's engines without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api.schemas.chat import ChatResponse, CheckpointRef, GenerationFields
from api.services.adapters import find_checkpoint
from api.services.chat_params import generation_params
from core.errors import (
    AppError,
    ChatCapacity,
    GenerationFailed,
    InvalidMessages,
    JobNotFound,
    ModelNotFound,
    ModelUnavailable,
    PromptTooLong,
)
from core.jobs import PROMOTED, adapter_id
from core.models import Adapter, Job
from core.settings import Settings
from serving.adapters import AdapterError, AdapterSpec
from serving.errors import ModelCacheFullError
from serving.events import Event, Result
from serving.params import GenerationParams
from serving.requests import Request
from serving.toolcalls import parse_tool_call, tool_names
from trainer.template import clean_message, render_ids
from trainer.validation import validate_conversation
from trainer.validation_codes import Code
from trainer.vision import is_vision_model

if TYPE_CHECKING:  # the engines load torch: imported when this process first serves a chat
    from serving.engine import Engine
    from serving.pool import EnginePool
    from serving.vision import VisionEngine, VisionPrompt

logger = logging.getLogger(__name__)

_TRAINING_ONLY = {Code.NO_ASSISTANT_CONTENT.value}  # a chat needs no answer to train on
_TURN_ROLES = ("user", "observation")
PREFIX_ALLOWANCE = 1024  # context a P-Tuning v2 prefix may take besides prompt and answer
# --- vision (serving.vision, api.services.vision_chat): a vision base gets a VisionEngine
ChatEngine: TypeAlias = "Engine | VisionEngine"
Prompt: TypeAlias = "list[int] | VisionPrompt"


@dataclass(frozen=True)
class Target:
    """What a chat request runs on."""

    name: str
    base_model: str
    model_dir: Path
    tokenizer_dir: Path | None = None
    adapter: AdapterSpec | None = None


class ChatService:
    """One per app: the engine pool of this process and the rules of a chat request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: EnginePool[Engine] | None = None
        self._vision: EnginePool[VisionEngine] | None = None
        self._pool_lock = threading.Lock()

    @property
    def pool(self) -> EnginePool[Engine]:
        """This process's engines; the first use loads torch (an API that forwards chat to a
        replica never does)."""
        with self._pool_lock:
            if self._pool is None:
                from serving.engine import Engine
                from serving.pool import EnginePool

                chat = self.settings.chat
                self._pool = EnginePool(
                    Engine.open,
                    max_models=chat.max_models,
                    max_batch=chat.max_batch,
                    max_adapters=chat.max_adapters,
                    max_adapter_bytes=chat.max_adapter_bytes,
                    max_lora_rank=chat.max_lora_rank,
                    cache_bytes=int(chat.cache_gib * 1024**3) if chat.cache_gib else None,
                    max_context=chat.max_prompt_tokens + chat.max_new_tokens + PREFIX_ALLOWANCE,
                    max_prefill_tokens=chat.max_prefill_tokens,
                    cuda_graphs=chat.cuda_graphs,
                )
            return self._pool

    @property
    def vision(self) -> EnginePool[VisionEngine]:
        """This process's vision engines (:mod:`serving.vision`), made on first use."""
        with self._pool_lock:
            if self._vision is None:
                from serving.pool import EnginePool
                from serving.vision import VisionEngine

                chat = self.settings.chat
                self._vision = EnginePool(
                    VisionEngine.open,
                    max_models=chat.max_models,
                    max_adapters=chat.max_adapters,
                    max_adapter_bytes=chat.max_adapter_bytes,
                )
            return self._vision

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._vision is not None:
            self._vision.close()

    def capacity(self) -> dict[str, dict[str, int]]:
        """Each loaded engine's cache and rows (:meth:`serving.engine.Engine.capacity`)."""
        return self._pool.capacity() if self._pool is not None else {}

    # ---- naming -----------------------------------------------------------------------------

    def resolve(self, session: Session, tenant: str, model: str | CheckpointRef) -> Target:
        """The base model, adapter id or job checkpoint ``model`` names; a checkpoint may also
        be named ``<job's adapter id>:ckpt-<step>`` (OpenAI's ``fine_tuned_model_checkpoint``)
        without being promoted first."""
        if (
            isinstance(model, str)
            and model not in self.settings.models
            and session.get(Adapter, model) is None
        ):
            model = _checkpoint_ref(model)
        if isinstance(model, CheckpointRef):
            job = session.get(Job, model.job)
            if job is None or job.tenant_id != tenant:
                raise JobNotFound(f"job {model.job} not found", param="model.job")
            checkpoint = find_checkpoint(session, job, model.checkpoint, param="model.checkpoint")
            name = adapter_id(job, checkpoint.step)  # what promoting it would name it
            return self._target(name, job.model, job.method, Path(checkpoint.path))
        if model in self.settings.models:
            return Target(model, model, self.settings.models[model].path)
        adapter = session.get(Adapter, model)
        if adapter is None or adapter.tenant_id != tenant:
            raise ModelNotFound(
                f"no model {model!r}: GET /models lists the base models and your adapters",
                param="model",
            )
        return self._target(adapter.id, adapter.base_model, adapter.method, Path(adapter.path))

    def _target(self, name: str, base_model: str, method: str, path: Path) -> Target:
        base = self.settings.models.get(base_model)
        if not path.is_dir():
            raise ModelUnavailable(f"the files of {name} are missing on this server")
        if method == "sft":  # a whole model of its own, with its base's tokenizer
            return Target(name, base_model, path, tokenizer_dir=base.path if base else None)
        if base is None:
            raise ModelUnavailable(
                f"{name} needs base model {base_model!r}, which this server does not serve "
                "(GLMFT_MODELS)",
                param="model",
            )
        try:
            spec = AdapterSpec.from_dir(name, path)
        except AdapterError as exc:
            raise ModelUnavailable(str(exc), param="model") from exc
        return Target(name, base_model, base.path, adapter=spec)

    async def open(
        self, session: Session, tenant: str, model: str | CheckpointRef
    ) -> tuple[Target, ChatEngine]:
        """Resolve ``model`` and get its engine; the session is closed before the (possibly
        long) model load and generation, so the request holds no database connection."""
        target = await run_in_threadpool(self.resolve, session, tenant, model)
        session.close()
        return target, await self.engine(target)

    async def engine(self, target: Target) -> ChatEngine:
        """The target's engine; the first request for a model waits for it to load."""
        from trainer.modeling import UnsupportedModelError

        try:
            if is_vision_model(target.model_dir):  # vision: serving.vision
                return await run_in_threadpool(self._vision_engine, target)
            return await run_in_threadpool(
                self.pool.get, target.model_dir, tokenizer_dir=target.tokenizer_dir
            )
        except ModelCacheFullError as exc:
            raise ChatCapacity(str(exc)) from exc
        except UnsupportedModelError as exc:  # e.g. remote code: the registry's model, not ours
            raise ModelUnavailable(str(exc), param="model") from exc

    def _vision_engine(self, target: Target) -> VisionEngine:
        entry = self.settings.models.get(target.base_model)
        return self.vision.get(
            target.model_dir,
            tokenizer_dir=target.tokenizer_dir,
            trust_remote_code=bool(entry and entry.trust_remote_code),
        )

    def _find(self, model_dir: Path) -> ChatEngine | None:
        """The loaded engine of ``model_dir``, text or vision (never loads one)."""
        text = self._pool.find(model_dir) if self._pool is not None else None
        return text or (self._vision.find(model_dir) if self._vision is not None else None)

    def _model_dir(self, base_model: str, method: str, path: str) -> Path | None:
        if method == "sft":
            return Path(path)
        base = self.settings.models.get(base_model)
        return base.path if base else None

    def state_of(self, name: str, base_model: str, method: str, path: str) -> tuple[bool, bool]:
        """Whether the adapter is loaded in this process, and pinned."""
        model_dir = self._model_dir(base_model, method, path)
        engine = self._find(model_dir) if model_dir else None
        if engine is None:
            return False, False
        if method == "sft":
            return True, False
        loaded = engine.loaded().get(name)
        return loaded is not None, bool(loaded and loaded.pinned)

    async def unload(self, name: str, base_model: str, method: str, path: str) -> None:
        """Free the adapter's memory in this process (a full-SFT model: its whole engine)."""
        model_dir = self._model_dir(base_model, method, path)
        if model_dir is None:
            return
        if method == "sft":
            for pool in (self._pool, self._vision):
                if pool is not None:
                    await run_in_threadpool(pool.close_model, model_dir)
            return
        engine = self._find(model_dir)
        if engine is not None:
            await asyncio.wrap_future(engine.unload(name))

    # ---- a request --------------------------------------------------------------------------

    def prepare(
        self,
        engine: ChatEngine,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        fields: GenerationFields,
    ) -> tuple[Prompt, GenerationParams, set[str]]:
        """The prompt's token ids, the sampling parameters and the offered tool names.

        CPU work (validation, the template, the tokenizer, images): call it in a worker thread,
        never on the event loop. Text too long for any prompt is refused before it is tokenized.
        """
        from api.services.vision_chat import has_images, prepare_vision
        from serving.vision import VisionEngine

        limits = self.settings.chat
        chars = text_size(messages) + text_size(tools)
        if chars > limits.max_prompt_chars:
            raise PromptTooLong(
                f"the messages and tools hold {chars} characters; at most "
                f"{limits.max_prompt_chars} (and {limits.max_prompt_tokens} tokens)",
                param="messages",
            )
        if isinstance(engine, VisionEngine):  # images allowed: api.services.vision_chat
            return prepare_vision(self.settings, engine, messages, tools, fields)
        if has_images(messages):
            raise InvalidMessages(
                "this model is not a vision model: images need a vision base", param="messages"
            )
        if len(messages) > limits.max_messages:
            raise InvalidMessages(
                f"{len(messages)} messages; at most {limits.max_messages}", param="messages"
            )
        messages = with_tools(messages, tools)
        check_messages(messages)
        if fields.max_new_tokens and fields.max_new_tokens > limits.max_new_tokens:
            raise PromptTooLong(
                f"max_new_tokens {fields.max_new_tokens} is over this server's limit "
                f"{limits.max_new_tokens}",
                param="max_new_tokens",
            )
        prompt = render_ids(
            engine.tokenizer, [clean_message(m) for m in messages], generation_prompt=True
        )
        params = generation_params(len(prompt), engine.config, fields, limits)
        return prompt, params, tool_names(messages)

    async def events(
        self, engine: ChatEngine, target: Target, prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[Event]:
        """The engine's events for one request, ending with ``done`` or ``error``; leaving
        early (a client that went away) stops the request's generation."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def deliver(event: Event) -> None:  # on the engine thread
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, event)

        from serving.vision import VisionEngine, VisionPrompt, VisionRequest

        request: Request | VisionRequest
        if isinstance(engine, VisionEngine) and isinstance(prompt, VisionPrompt):
            request = VisionRequest(prompt, params, deliver, adapter=target.adapter)
            engine.submit(request)
        elif not isinstance(engine, VisionEngine) and isinstance(prompt, list):
            request = Request(prompt, params, deliver, adapter=target.adapter)
            engine.submit(request)
        else:
            raise TypeError("a prompt was prepared for another kind of engine")
        try:
            while True:
                event = await queue.get()
                yield event
                if event.kind != "delta":
                    return
        finally:
            request.cancelled = True


def text_size(value: Any) -> int:
    """Characters of every string (keys included) in a JSON-like value, but for image data URLs
    (images, which are no text of the prompt)."""
    total, todo = 0, [value]
    while todo:  # a loop, not recursion: a deeply nested body must not overflow the stack
        item = todo.pop()
        if isinstance(item, str):
            total += 0 if item.startswith("data:image/") else len(item)
        elif isinstance(item, dict):
            todo += list(item.keys()) + list(item.values())
        elif isinstance(item, list | tuple):
            todo += list(item)
    return total


def _checkpoint_ref(model: str) -> str | CheckpointRef:
    """``ft:<base>:<suffix>:<job>:ckpt-<step>`` as a job checkpoint, else ``model`` as it is."""
    adapter, found, step = model.rpartition(PROMOTED)
    if not found or not step.isdigit() or int(step) >= 2**31 or ":" not in adapter:
        return model
    return CheckpointRef(job=adapter.rsplit(":", 1)[1], checkpoint=int(step))


async def answer(
    service: ChatService,
    engine: ChatEngine,
    target: Target,
    prompt: Prompt,
    params: GenerationParams,
    names: set[str],
) -> ChatResponse:
    """The whole answer of one request, or its engine's error as an :class:`AppError`."""
    async for event in service.events(engine, target, prompt, params):
        if event.kind == "done" and event.result is not None:
            return response_of(target, event.result, names)
        if event.kind == "error":
            raise engine_error(event)
    raise GenerationFailed("the engine ended the request without an answer")


def engine_error(event: Event) -> AppError:
    """The error vocabulary's name for an engine's ``error`` event."""
    if event.code == "capacity":
        return ChatCapacity(event.message)
    return GenerationFailed(event.message)


def with_tools(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """``tools`` moved into the system message, where GLM-4's template renders them."""
    if not tools:
        return messages
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "tools": tools}, *messages[1:]]
    return [{"role": "system", "content": "", "tools": tools}, *messages]


def check_messages(messages: list[dict[str, Any]]) -> None:
    """The training data rules that apply to a prompt, and a last turn the model answers."""
    errors, _ = validate_conversation({"messages": messages})
    issues = [
        {"path": i.path, "code": i.code, "message": i.message}
        for i in errors
        if i.code not in _TRAINING_ONLY
    ]
    last = messages[-1].get("role") if messages else None
    if last not in _TURN_ROLES:
        issues.append(
            {
                "path": f"messages[{len(messages) - 1}]",
                "code": "no_turn_to_answer",
                "message": f"the last message is {last!r}; the model answers a user or "
                "observation message",
            }
        )
    if issues:
        first = issues[0]
        raise InvalidMessages(
            f"{first['path']}: {first['message']}",
            param=first["path"],
            details={"issues": issues},
        )


def response_of(target: Target, result: Result, names: set[str]) -> ChatResponse:
    """The ``POST /chat`` answer for a finished request."""
    call = parse_tool_call(result.text, names) if names else None
    finish = "tool_call" if call else result.finish_reason
    return ChatResponse.model_validate(
        {
            "id": f"chat-{uuid.uuid4().hex[:24]}",
            "model": target.name,
            "message": {
                "content": result.text,
                "tool_call": {"name": call.name, "arguments": call.arguments} if call else None,
            },
            "finish_reason": "stop" if finish == "cancelled" else finish,
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens,
            },
            "timings": result.timings,
        }
    )
