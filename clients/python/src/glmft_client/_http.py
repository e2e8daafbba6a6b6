"""The HTTP layer shared by every resource: where to send (base URL, API key), retries with
exponential backoff on connection errors, 408, 429 and 5xx (honouring ``Retry-After``), and the
mapping of error responses onto :mod:`glmft_client.errors`.

A request is described once (:class:`RequestSpec`) and rebuilt for every attempt, so an upload
is sent from its first byte again and an ``Idempotency-Key`` header is the same on every retry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from glmft_client.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    QuotaExceededError,
    error_from_response,
)

logger = logging.getLogger("glmft_client")

ENV_BASE_URL = "GLMFT_BASE_URL"
ENV_API_KEY = "GLMFT_API_KEY"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 3
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: A server asking for a longer pause than this gets this: a CI step should not sleep for hours.
MAX_RETRY_AFTER_S = 60.0
VERSION = "0.1.0"


@dataclass(frozen=True)
class Options:
    """Where and how to send requests.

    Args:
        base_url: the service's root URL, without ``/v1``.
        api_key: sent as ``Authorization: Bearer``; ``None`` when the server has auth off.
        timeout: seconds per request attempt.
        max_retries: retries after the first attempt.
        backoff_s: the first retry's pause; it doubles per retry (with jitter).
        max_backoff_s: the longest pause between retries without ``Retry-After``.
    """

    base_url: str
    api_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    @classmethod
    def resolve(
        cls,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        max_retries: int,
    ) -> Options:
        """Arguments first, then ``GLMFT_BASE_URL`` / ``GLMFT_API_KEY``, then the defaults."""
        url = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY) or None
        return cls(base_url=url.rstrip("/"), api_key=key, timeout=timeout, max_retries=max_retries)


@dataclass(frozen=True)
class RequestSpec:
    """One API call, rebuilt for each attempt."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    files: Mapping[str, Any] | None = None
    data: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def retry_delay(options: Options, attempt: int, failure: APIError) -> float | None:
    """How long to wait before retry number ``attempt + 1``; ``None``: do not retry."""
    if attempt >= options.max_retries:
        return None
    if isinstance(failure, QuotaExceededError):
        return None  # a quota does not lift within a retry's wait
    if isinstance(failure, APIStatusError):
        if failure.status_code not in RETRY_STATUSES:
            return None
        headers = failure.response.headers if failure.response is not None else {}
        after = parse_retry_after(headers.get("retry-after"))
        if after is not None:
            return min(after, MAX_RETRY_AFTER_S)
    elif not isinstance(failure, APIConnectionError):
        return None
    backoff = min(options.max_backoff_s, options.backoff_s * 2**attempt)
    return backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography


def _transport_failure(exc: httpx.TransportError, spec: RequestSpec) -> APIConnectionError:
    kind = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    what = "timed out" if kind is APITimeoutError else "failed"
    return kind(f"{spec.method} {spec.path} {what}: {type(exc).__name__}: {exc}")


class _Sender:
    """Request building shared by the sync and async senders."""

    def __init__(self, options: Options) -> None:
        self.options = options

    def build(self, client: httpx.Client | httpx.AsyncClient, spec: RequestSpec) -> httpx.Request:
        headers = {"Accept": "application/json", "User-Agent": f"glmft-client/{VERSION}"}
        if self.options.api_key:
            headers["Authorization"] = f"Bearer {self.options.api_key}"
        headers.update(spec.headers)
        params = {k: v for k, v in (spec.params or {}).items() if v is not None}
        return client.build_request(
            spec.method,
            self.options.base_url + spec.path,
            params=params,
            json=spec.json,
            files=spec.files,
            data=spec.data,
            headers=headers,
            timeout=spec.timeout if spec.timeout is not None else self.options.timeout,
        )

    def give_up_or_wait(self, attempt: int, failure: APIError, spec: RequestSpec) -> float:
        delay = retry_delay(self.options, attempt, failure)
        if delay is None:
            raise failure
        logger.info(
            "%s %s: %s; retry %d in %.2f s", spec.method, spec.path, failure, attempt + 1, delay
        )
        return delay


class SyncHTTP(_Sender):
    """Sends with an ``httpx.Client`` (yours, or one this object owns and closes)."""

    def __init__(self, options: Options, client: httpx.Client | None = None) -> None:
        super().__init__(options)
        self._client = client or httpx.Client()
        self._owns_client = client is None

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def request(self, spec: RequestSpec) -> httpx.Response:
        """Send with retries; the read response, or raise the mapped error."""
        return self._send(spec, stream=False)

    @contextmanager
    def stream(self, spec: RequestSpec) -> Iterator[httpx.Response]:
        """Send with retries and leave the body unread (closed on exit)."""
        response = self._send(spec, stream=True)
        try:
            yield response
        finally:
            response.close()

    def _send(self, spec: RequestSpec, *, stream: bool) -> httpx.Response:
        attempt = 0
        while True:
            failure: APIError
            try:
                response = self._client.send(self.build(self._client, spec), stream=stream)
            except httpx.TransportError as exc:
                failure = _transport_failure(exc, spec)
            else:
                if response.is_success:
                    return response
                response.read()
                response.close()
                failure = error_from_response(response)
            time.sleep(self.give_up_or_wait(attempt, failure, spec))
            attempt += 1


class AsyncHTTP(_Sender):
    """Sends with an ``httpx.AsyncClient`` (yours, or one this object owns and closes)."""

    def __init__(self, options: Options, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(options)
        self._client = client or httpx.AsyncClient()
        self._owns_client = client is None

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def request(self, spec: RequestSpec) -> httpx.Response:
        """Send with retries; the read response, or raise the mapped error."""
        return await self._send(spec, stream=False)

    @asynccontextmanager
    async def stream(self, spec: RequestSpec) -> AsyncIterator[httpx.Response]:
        """Send with retries and leave the body unread (closed on exit)."""
        response = await self._send(spec, stream=True)
        try:
            yield response
        finally:
            await response.aclose()

    async def _send(self, spec: RequestSpec, *, stream: bool) -> httpx.Response:
        attempt = 0
        while True:
            failure: APIError
            try:
                response = await self._client.send(self.build(self._client, spec), stream=stream)
            except httpx.TransportError as exc:
                failure = _transport_failure(exc, spec)
            else:
                if response.is_success:
                    return response
                await response.aread()
                await response.aclose()
                failure = error_from_response(response)
            await asyncio.sleep(self.give_up_or_wait(attempt, failure, spec))
            attempt += 1
