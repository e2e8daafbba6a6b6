"""A route whose JSON body is parsed in a worker thread, never on the event loop.

A chat request may carry an image (tens of MB of base64): parsing it where every other request
is served would hold them all up. FastAPI parses a body with ``await request.json()`` on the
request it is handed, so parsing it first, in a thread, leaves it nothing to do there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

_JSON_TYPES = ("application/json",)


class ThreadedJsonRoute(APIRoute):
    """An :class:`APIRoute` that decodes its JSON body off the event loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parse_off_loop(request: Request) -> Response:
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            body = await request.body()
            if body and kind in _JSON_TYPES:
                try:
                    parsed = await run_in_threadpool(json.loads, body)
                except ValueError as exc:  # bad JSON or bad UTF-8: FastAPI's json_invalid
                    position = getattr(exc, "pos", 0)
                    error = {
                        "type": "json_invalid",
                        "loc": ("body", position),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": str(exc)},
                    }
                    raise RequestValidationError([error]) from exc
                request._json = parsed  # what request.json() returns from now on
            return await handler(request)

        return parse_off_loop
