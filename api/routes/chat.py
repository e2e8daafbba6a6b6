"""``POST /chat``: talk to a base model, an adapter or one checkpoint of a job."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import SessionDep, TenantDep
from api.json_route import ThreadedJsonRoute
from api.schemas.chat import ChatRequest, ChatResponse
from api.schemas.common import error_responses
from api.services.chat import (
    ChatEngine,
    ChatService,
    Prompt,
    Target,
    answer,
    engine_error,
    response_of,
)
from api.sse import format_event
from serving.params import GenerationParams

router = APIRouter(tags=["chat"], route_class=ThreadedJsonRoute)


def chat_service(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat
    return service


@router.post(
    "/chat",
    response_model=ChatResponse,
    responses={
        **error_responses(404, 409, 422, 503),
        200: {"content": {"text/event-stream": {}}, "description": "With `stream`: SSE."},
    },
)
async def chat(
    body: ChatRequest, request: Request, session: SessionDep, tenant: TenantDep
) -> ChatResponse | StreamingResponse:
    """Answer the conversation. With ``stream: true``: ``delta`` frames (``{"text"}``), then
    one ``done`` frame holding the whole response, or an ``error`` frame."""
    service = chat_service(request)
    target, engine = await service.open(session, tenant, body.model)
    prompt, params, names = await run_in_threadpool(
        service.prepare, engine, body.messages, body.tools, body
    )
    if body.stream:
        frames = _frames(service, engine, target, prompt, params, names)
        return StreamingResponse(frames, media_type="text/event-stream")
    return await answer(service, engine, target, prompt, params, names)


async def _frames(
    service: ChatService,
    engine: ChatEngine,
    target: Target,
    prompt: Prompt,
    params: GenerationParams,
    names: set[str],
) -> AsyncIterator[str]:
    async for event in service.events(engine, target, prompt, params):
        if event.kind == "delta":
            yield format_event(None, "delta", {"text": event.text})
        elif event.kind == "done" and event.result is not None:
            done = response_of(target, event.result, names)
            yield format_event(None, "done", done.model_dump(mode="json"))
        else:
            yield format_event(None, "error", {"error": engine_error(event).to_dict()})
