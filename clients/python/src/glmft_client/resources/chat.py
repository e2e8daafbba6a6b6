"""``client.chat``: one answer from a base model, an adapter or a job's checkpoint, whole or
streamed as it is generated."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, TypedDict, Unpack

from glmft_client._http import AsyncHTTP, RequestSpec, SyncHTTP
from glmft_client._sse import ServerSentEvent, aiter_sse, iter_sse
from glmft_client.errors import APIStreamError
from glmft_client.types import ChatDelta, ChatRequest, ChatResponse, CheckpointRef

ModelRef = str | CheckpointRef | Mapping[str, Any]


class ChatOptions(TypedDict, total=False):
    """Tools and sampling; what is left out takes the server's defaults."""

    tools: list[dict[str, Any]] | None
    max_new_tokens: int
    temperature: float
    top_p: float
    repetition_penalty: float
    stop: list[str]
    seed: int


#: What a stream yields: pieces of text, then the whole response once.
ChatChunk = ChatDelta | ChatResponse


def _spec(
    model: ModelRef, messages: Sequence[Mapping[str, Any]], stream: bool, options: ChatOptions
) -> RequestSpec:
    ref = model if isinstance(model, str | CheckpointRef) else CheckpointRef.model_validate(model)
    body = ChatRequest(model=ref, messages=[dict(m) for m in messages], stream=stream, **options)
    headers = {"Accept": "text/event-stream"} if stream else {}
    return RequestSpec(
        "POST", "/chat", json=body.model_dump(mode="json", exclude_none=True), headers=headers
    )


def _chunk(sse: ServerSentEvent) -> ChatChunk | None:
    """The chunk a frame carries (``None`` for frames this version does not know)."""
    if sse.event == "delta":
        return ChatDelta.model_validate_json(sse.data)
    if sse.event == "done":
        return ChatResponse.model_validate_json(sse.data)
    if sse.event == "error":
        error = json.loads(sse.data).get("error", {})
        raise APIStreamError(
            str(error.get("message", "the stream failed")), code=error.get("code"), body=error
        )
    return None


class Chat:
    """Chat with base models, adapters and checkpoints."""

    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def create(
        self,
        *,
        model: ModelRef,
        messages: Sequence[Mapping[str, Any]],
        **options: Unpack[ChatOptions],
    ) -> ChatResponse:
        """One answer.

        Args:
            model: a base model name, an adapter id, or ``{"job": id, "checkpoint": step}``.
            messages: GLM-4 format messages, ending with a user or observation message.
            **options: ``tools``, ``max_new_tokens``, ``temperature``, ``top_p``,
                ``repetition_penalty``, ``stop``, ``seed`` (unset: the server's defaults).
        """
        response = self._http.request(_spec(model, messages, False, options))
        return ChatResponse.model_validate(response.json())

    def stream(
        self,
        *,
        model: ModelRef,
        messages: Sequence[Mapping[str, Any]],
        **options: Unpack[ChatOptions],
    ) -> Iterator[ChatChunk]:
        """The answer as it is generated: :class:`ChatDelta` pieces, then the
        :class:`ChatResponse`. Raises :class:`APIStreamError` if generation fails midway."""
        with self._http.stream(_spec(model, messages, True, options)) as response:
            for sse in iter_sse(response.iter_lines()):
                chunk = _chunk(sse)
                if chunk is not None:
                    yield chunk
                if isinstance(chunk, ChatResponse):
                    return


class AsyncChat:
    """The async flavour of :class:`Chat`."""

    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def create(
        self,
        *,
        model: ModelRef,
        messages: Sequence[Mapping[str, Any]],
        **options: Unpack[ChatOptions],
    ) -> ChatResponse:
        """See :meth:`Chat.create`."""
        response = await self._http.request(_spec(model, messages, False, options))
        return ChatResponse.model_validate(response.json())

    async def stream(
        self,
        *,
        model: ModelRef,
        messages: Sequence[Mapping[str, Any]],
        **options: Unpack[ChatOptions],
    ) -> AsyncIterator[ChatChunk]:
        """See :meth:`Chat.stream`."""
        async with self._http.stream(_spec(model, messages, True, options)) as response:
            async for sse in aiter_sse(response.aiter_lines()):
                chunk = _chunk(sse)
                if chunk is not None:
                    yield chunk
                if isinstance(chunk, ChatResponse):
                    return
