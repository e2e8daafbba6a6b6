"""Chat on a separate replica: with ``GLMFT_CHAT__REMOTE_URL`` set, this API forwards every chat,
adapter and evaluation request to that glmft process (a GPU node running the engine embedded,
sharing the store; its runner runs the evaluations) and streams its answer back unchanged, so
this process never loads a model.

Pure ASGI, so Server-Sent Events pass through as they are produced. The caller's
``Authorization`` and ``X-Request-ID`` go along; a replica that cannot be reached is a 503.
"""

from __future__ import annotations

import re

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import envelope
from core.errors import ChatUnavailable

CHAT_PATHS = re.compile(
    r"^/(chat|v1/chat/completions|adapters(/.*)?|evaluations(/.*)?"
    r"|jobs/[^/]+/checkpoints/[^/]+/promote)$"
)
_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length"}


class ChatProxyMiddleware:
    def __init__(self, app: ASGIApp, remote_url: str) -> None:
        self.app = app
        self.remote_url = remote_url.rstrip("/")
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not CHAT_PATHS.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self._client is None:
            timeout = httpx.Timeout(10.0, read=None)  # answers may take long; streams longer
            self._client = httpx.AsyncClient(timeout=timeout)
        query = scope.get("query_string", b"").decode()
        url = f"{self.remote_url}{scope['path']}" + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        request = self._client.build_request(scope["method"], url, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            error = ChatUnavailable(f"the chat replica {self.remote_url} is unreachable: {exc}")
            request_id = scope.get("state", {}).get("request_id", "")
            await envelope(503, error.to_dict(), request_id, {"Retry-After": "5"})(
                scope, receive, send
            )
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v)
                        for k, v in response.headers.raw
                        if k.lower() not in _HOP_BY_HOP - {b"content-length"}
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
