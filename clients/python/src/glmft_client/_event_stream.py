"""A resource's event route (``GET /{resource}/{id}/events``): its past events page by page, or
its live stream until the ``end`` frame. A dropped stream is reopened after the last event
received, ``max_retries`` times in a row at most; then ``APIConnectionError`` is raised."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import httpx

from glmft_client._http import AsyncHTTP, RequestSpec, SyncHTTP
from glmft_client._sse import ServerSentEvent, aiter_sse, iter_sse
from glmft_client.errors import APIConnectionError
from glmft_client.types import EvaluationEvent, JobEvent

EVENTS_PAGE = 1000
SSE_HEADERS = {"Accept": "text/event-stream"}


E = TypeVar("E", JobEvent, EvaluationEvent)


@dataclass(frozen=True)
class EventRoute(Generic[E]):
    """The events of one job or evaluation; ``kind`` names it in errors (``job job-1``)."""

    kind: str
    path: str
    model: type[E]

    def spec(self, after: int, *, follow: bool) -> RequestSpec:
        return RequestSpec(
            "GET",
            self.path,
            params={"after": after, "limit": EVENTS_PAGE},
            headers=SSE_HEADERS if follow else {},
        )

    def page(self, response: httpx.Response) -> tuple[list[E], bool]:
        """A page's events, and whether another page follows."""
        body = response.json()
        data = [self.model.model_validate(item) for item in body["data"]]
        return data, bool(body["has_more"] and data)

    def event(self, sse: ServerSentEvent) -> E | None:
        """The event a frame carries; ``None`` for the final ``end`` frame."""
        return None if sse.event == "end" else self.model.model_validate_json(sse.data)

    def broke(self, exc: Exception | None) -> APIConnectionError:
        why = f"broke ({type(exc).__name__}: {exc})" if exc else "closed before its end event"
        return APIConnectionError(f"the event stream of {self.kind} {why}")


def events(http: SyncHTTP, route: EventRoute[E], after: int, *, follow: bool) -> Iterator[E]:
    """The events after ``after``: the recorded ones, or with ``follow`` the live stream."""
    while not follow:
        data, more = route.page(http.request(route.spec(after, follow=False)))
        yield from data
        if not more:
            return
        after = data[-1].id
    failures = 0
    while True:
        try:
            with http.stream(route.spec(after, follow=True)) as response:
                for sse in iter_sse(response.iter_lines()):
                    event = route.event(sse)
                    if event is None:
                        return
                    failures, after = 0, event.id
                    yield event
            error = route.broke(None)
        except httpx.TransportError as exc:  # raised while reading: the stream broke
            error = route.broke(exc)
        failures += 1
        if failures > http.options.max_retries:
            raise error
        time.sleep(http.options.backoff_s)


async def aevents(
    http: AsyncHTTP, route: EventRoute[E], after: int, *, follow: bool
) -> AsyncIterator[E]:
    """The async flavour of :func:`events`."""
    while not follow:
        data, more = route.page(await http.request(route.spec(after, follow=False)))
        for past in data:
            yield past
        if not more:
            return
        after = data[-1].id
    failures = 0
    while True:
        try:
            async with http.stream(route.spec(after, follow=True)) as response:
                async for sse in aiter_sse(response.aiter_lines()):
                    event = route.event(sse)
                    if event is None:
                        return
                    failures, after = 0, event.id
                    yield event
            error = route.broke(None)
        except httpx.TransportError as exc:  # raised while reading: the stream broke
            error = route.broke(exc)
        failures += 1
        if failures > http.options.max_retries:
            raise error
        await asyncio.sleep(http.options.backoff_s)
