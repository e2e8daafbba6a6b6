"""OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models``: an OpenAI client
pointed at glmft (``base_url=.../v1``) talks to its base models and adapters."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool

from api.deps import SessionDep, TenantDep
from api.json_route import ThreadedJsonRoute
from api.openai_errors import OPENAI_ERROR_RESPONSES, OpenAIRoute, error_type
from api.routes.chat import chat_service
from api.schemas.chat import GenerationFields
from api.schemas.openai_chat import ChatCompletion, ChatCompletionRequest, ModelList, ModelObject
from api.services.adapters import visible_adapters
from api.services.chat import (
    ChatEngine,
    ChatService,
    Prompt,
    Target,
    answer,
    engine_error,
    response_of,
)
from api.services.openai_chat import completion_of, glm_messages
from core.models import BaseModelRecord
from serving.params import GenerationParams


class _OpenAIChatRoute(OpenAIRoute, ThreadedJsonRoute):
    """OpenAI's error shape around a body decoded off the event loop."""


router = APIRouter(prefix="/v1", tags=["openai"], route_class=_OpenAIChatRoute)


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        **OPENAI_ERROR_RESPONSES,
        200: {"content": {"text/event-stream": {}}, "description": "With `stream`: SSE chunks."},
    },
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, session: SessionDep, tenant: TenantDep
) -> ChatCompletion | StreamingResponse:
    """A chat completion; ``model`` is a base model name or an adapter id."""
    service = chat_service(request)
    target, engine = await service.open(session, tenant, body.model)
    messages = glm_messages(body.messages)
    tools = None
    if body.tools and body.tool_choice != "none":
        tools = [t.model_dump(exclude_none=True) for t in body.tools]
    prompt, params, names = await run_in_threadpool(
        service.prepare, engine, messages, tools, _fields(body)
    )
    created = int(time.time())
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _chunks(
            service, engine, target, prompt, params, names, completion_id, created, include_usage
        )
        return StreamingResponse(chunks, media_type="text/event-stream")
    result = await answer(service, engine, target, prompt, params, names)
    return completion_of(result, completion_id, created)


def _fields(body: ChatCompletionRequest) -> GenerationFields:
    defaults = GenerationFields()
    return GenerationFields(
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=defaults.temperature if body.temperature is None else body.temperature,
        top_p=body.top_p or defaults.top_p,
        repetition_penalty=body.repetition_penalty or defaults.repetition_penalty,
        stop=body.stop,
        seed=body.seed,
    )


async def _chunks(
    service: ChatService,
    engine: ChatEngine,
    target: Target,
    prompt: Prompt,
    params: GenerationParams,
    names: set[str],
    completion_id: str,
    created: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    """``chat.completion.chunk`` frames, then ``[DONE]``. With tools offered the text is held
    back until the end, when it is known to be an answer or a tool call."""

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": target.name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    async for event in service.events(engine, target, prompt, params):
        if event.kind == "delta" and not names:
            yield chunk({"content": event.text})
        elif event.kind == "done" and event.result is not None:
            reply = response_of(target, event.result, names)
            choice = completion_of(reply, completion_id, created).choices[0]
            delta: dict[str, Any] = {}
            if choice.message.tool_calls:
                delta["tool_calls"] = [
                    {"index": i, **call.model_dump()}
                    for i, call in enumerate(choice.message.tool_calls)
                ]
            elif names:
                delta["content"] = choice.message.content
            yield chunk(delta, choice.finish_reason)
            if include_usage:
                usage = reply.usage.model_dump()
                body = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": target.name,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(body)}\n\n"
        elif event.kind == "error":
            error = engine_error(event)
            body = {
                "error": {
                    "message": error.message,
                    "type": error_type(error.http_status),
                    "param": None,
                    "code": error.code,
                }
            }
            yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"


@router.get("/models", response_model=ModelList, responses=OPENAI_ERROR_RESPONSES)
def list_models(session: SessionDep, tenant: TenantDep) -> ModelList:
    """The base models, then your adapters (the ids to pass as ``model``)."""
    bases = session.exec(select(BaseModelRecord).order_by(col(BaseModelRecord.name))).all()
    data = [
        ModelObject(id=b.name, created=int(b.created_at.timestamp()), owned_by="glmft")
        for b in bases
    ]
    data += [
        ModelObject(id=a.id, created=int(a.created_at.timestamp()), owned_by=tenant)
        for a in visible_adapters(session, tenant)
    ]
    return ModelList(data=data)
