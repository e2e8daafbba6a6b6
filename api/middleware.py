"""Request context and guards (pure ASGI, so streaming responses pass untouched).

:class:`RequestContextMiddleware`: an ``X-Request-ID`` on every response, request metrics, and
the last line of defence for unexpected exceptions. :class:`RequestGuardMiddleware`: what a
request may cost before any route sees it: a body over ``max_request_bytes`` is refused with
413 before any of it is parsed (uploads stream under their own limit), and a NUL character in
the path, the query or a JSON string is refused with 422 (PostgreSQL cannot store one, and no
identifier or name of this API holds one).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import envelope, internal_error_response
from api.openai_errors import openai_error
from api.telemetry import Telemetry

logger = logging.getLogger(__name__)

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _request_id(scope: Scope) -> str:
    """The caller's ``X-Request-ID`` when it is a sane token, else a fresh one."""
    given = Headers(scope=scope).get("x-request-id", "")
    return given if _CLIENT_ID.match(given) else uuid.uuid4().hex


def _route_label(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


class RequestContextMiddleware:
    """Tags, measures and guards each HTTP request."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        started_at = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception(
                "unhandled error in %s %s (request %s)", scope["method"], scope["path"], request_id
            )
            if status["started"]:
                raise
            await internal_error_response(request_id)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started_at
            self.telemetry.observe(
                scope["method"], _route_label(scope), int(status["code"]), elapsed
            )


_JSON_NUL = b"\\u0000"  # the escape of U+0000 in a JSON text
#: bytes of an oversized body read (and dropped) so the client can read its 413
_DRAIN_LIMIT = 64 * 1024 * 1024
_SCAN_ON_LOOP = 64 * 1024


class RequestGuardMiddleware:
    """Refuses oversized bodies (413) and NUL characters (422) before routing.

    ``max_body_bytes`` holds for every path but those of ``larger`` (path: bytes); a POST to
    one of ``streamed`` (the uploads) passes untouched: it streams to disk under its own limit.
    On the paths of ``text_bytes`` (chat), the bytes outside ``data:`` URLs (images) are bounded
    too: more text than any prompt may hold is refused (422 ``prompt_too_long``) unparsed.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        larger: dict[str, int] | None = None,
        streamed: tuple[str, ...] = (),
        text_bytes: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.larger = larger or {}
        self.streamed = streamed
        self.text_bytes = text_bytes or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = _nul_in_url(scope)
        if where is not None:
            await _refuse(scope, receive, send, 422, "invalid_request", where)
            return
        headers = Headers(scope=scope)
        if scope["method"] == "POST" and scope.get("path") in self.streamed:
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope.get("path", ""), self.max_body_bytes)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await _drain(receive)
            await _refuse(scope, receive, send, 413, "payload_too_large", None, limit)
            return
        body, complete = await _read_body(receive, limit)
        if not complete:
            await _drain(receive)
            await _refuse(scope, receive, send, 413, "payload_too_large", None, limit)
            return
        nul = (  # a large body is scanned in a thread: the loop serves others meanwhile
            await run_in_threadpool(_holds_json_nul, body)
            if len(body) > _SCAN_ON_LOOP
            else _holds_json_nul(body)
        )
        if nul:
            await _refuse(scope, receive, send, 422, "invalid_request", "body")
            return
        text_limit = self.text_bytes.get(scope.get("path", ""))
        if text_limit is not None and _text_bytes(body) > text_limit:
            await _refuse(scope, receive, send, 422, "prompt_too_long", "messages", text_limit)
            return
        await self.app(scope, _replay(body, receive), send)


def _holds_json_nul(body: bytes) -> bool:
    """Whether a JSON text escapes U+0000 (``\\u0000`` after an even run of backslashes;
    ``\\\\u0000`` is a backslash and the text "u0000"). ``bytes.find`` scans tens of MB in
    milliseconds (a regular expression would hold the interpreter for a second)."""
    start = body.find(_JSON_NUL)
    while start != -1:
        first = start
        while first > 0 and body[first - 1] == 0x5C:  # the backslashes before this one
            first -= 1
        if (start - first) % 2 == 0:
            return True
        start = body.find(_JSON_NUL, start + 1)
    return False


def _text_bytes(body: bytes) -> int:
    """Bytes of ``body`` outside its ``"data:image/...`` strings (inline images)."""
    images = 0
    start = body.find(b'"data:image/')
    while start != -1:
        end = body.find(b'"', start + 1)
        if end == -1:
            break
        images += end - start
        start = body.find(b'"data:image/', end + 1)
    return len(body) - images


def _nul_in_url(scope: Scope) -> str | None:
    """Where a NUL character is: ``path``, a query parameter's name, or None."""
    if "\x00" in scope.get("path", ""):
        return "path"
    query = scope.get("query_string", b"")
    if b"%00" not in query and b"\x00" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "") or "query"
    return "query"


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The whole body, or what arrived before it passed ``limit`` (then ``False``)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), True  # the client went away: the app sees that
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


async def _drain(receive: Receive) -> None:
    """Read (and drop) the rest of a refused body, up to a cap, so that the client finishes
    sending and reads the answer instead of a reset connection."""
    drained = 0
    while drained < _DRAIN_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, for streaming responses

    return replay


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    code: str,
    param: str | None,
    limit: int | None = None,
) -> None:
    if status == 413:
        message = f"the request body is larger than the limit of {limit} bytes"
    elif code == "prompt_too_long":
        message = f"the messages hold more text ({limit} bytes at most) than any prompt may"
    elif param == "body":
        message = "a string in the body holds a NUL character (\\u0000)"
    else:
        message = f"{param}: holds a NUL character"
    body: dict[str, Any] = {"code": code, "message": message}
    if param is not None:
        body["param"] = param
    request = Request(scope, receive)
    if scope.get("path", "").startswith("/v1/"):
        response = openai_error(request, status, body)
    else:
        rid = scope.get("state", {}).get("request_id") or uuid.uuid4().hex
        response = envelope(status, body, rid)
    await response(scope, receive, send)
