"""Retries against the live service through transports that misbehave first, then forward:
connection errors, 503 with ``Retry-After``, a lost response to ``POST /jobs``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from glmft_client import APIConnectionError, AsyncClient, Client, NotFoundError
from glmft_client._http import Options, parse_retry_after, retry_delay
from glmft_client.errors import RateLimitError

from tests.live_service import MODEL, TINY_OVERRIDES, LiveService, demo_jsonl

Fault = Callable[[httpx.Request], httpx.Response | None]


class FlakyTransport(httpx.BaseTransport):
    """Applies ``fault`` to the first ``failures`` requests matching ``when``, then forwards.

    A fault may raise (no response), answer itself, or return None after the request was
    forwarded (the response is lost on its way back).
    """

    def __init__(
        self,
        fault: Fault,
        failures: int,
        when: Callable[[httpx.Request], bool] = lambda _request: True,
    ) -> None:
        self.inner = httpx.HTTPTransport()
        self.fault = fault
        self.failures = failures
        self.when = when
        self.seen: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.when(request):
            return self.inner.handle_request(request)
        self.seen.append(request)
        if len(self.seen) <= self.failures:
            answer = self.fault(request)
            if answer is not None:
                return answer
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def busy(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, headers={"Retry-After": "1"}, json={"error": {"code": "x"}})


def sdk(live_service: LiveService, transport: FlakyTransport, retries: int = 3) -> Client:
    return Client(
        base_url=live_service.base_url,
        api_key=live_service.api_key,
        max_retries=retries,
        http_client=httpx.Client(transport=transport),
    )


def test_connection_errors_are_retried_with_backoff(live_service: LiveService) -> None:
    # given a network that refuses the first two connections
    transport = FlakyTransport(refuse, failures=2)
    # when the models are listed
    models = sdk(live_service, transport).models.list()
    # then the third attempt reached the server
    assert MODEL in {m.id for m in models} and len(transport.seen) == 3


def test_a_503_waits_as_long_as_retry_after_says(live_service: LiveService) -> None:
    transport = FlakyTransport(busy, failures=1)
    started = time.monotonic()
    models = sdk(live_service, transport).models.list()
    assert time.monotonic() - started >= 1.0
    assert models and len(transport.seen) == 2


def test_retries_stop_after_max_retries_and_4xx_is_never_retried(
    live_service: LiveService,
) -> None:
    refusing = FlakyTransport(refuse, failures=10)
    with pytest.raises(APIConnectionError, match="ConnectError"):
        sdk(live_service, refusing, retries=1).models.list()
    assert len(refusing.seen) == 2
    counting = FlakyTransport(refuse, failures=0)
    with pytest.raises(NotFoundError):
        sdk(live_service, counting).jobs.retrieve("job-missing")
    assert len(counting.seen) == 1


def test_a_lost_create_response_is_retried_with_the_same_idempotency_key(
    live_service: LiveService,
) -> None:
    # given a network that loses the answer to the first POST /jobs (the job was created)
    def lose(request: httpx.Request) -> None:
        transport.inner.handle_request(request).close()
        raise httpx.ReadError("connection reset", request=request)

    transport = FlakyTransport(
        lose, failures=1, when=lambda r: r.method == "POST" and r.url.path == "/jobs"
    )
    client = sdk(live_service, transport)
    dataset = client.datasets.upload(demo_jsonl(4), filename="train.jsonl")
    # when a job is created
    job = client.jobs.create(
        model=MODEL,
        method="lora",
        training_dataset=dataset.id,
        config="tiny/lora",
        overrides=TINY_OVERRIDES,
        gpus=0,
        metadata={"suite": "lost-response"},
    )
    # then the retry carried the same key and got the job the first attempt created
    keys = {r.headers["Idempotency-Key"] for r in transport.seen}
    assert len(transport.seen) == 2 and len(keys) == 1
    assert [j.id for j in client.jobs.list(metadata={"suite": "lost-response"}).data] == [job.id]
    client.jobs.cancel(job.id)


def test_the_async_client_retries_too(live_service: LiveService) -> None:
    class AsyncFlaky(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()
            self.seen = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.seen += 1
            if self.seen == 1:
                raise httpx.ConnectError("connection refused", request=request)
            if self.seen == 2:
                return busy(request)
            return await self.inner.handle_async_request(request)

    async def scenario(transport: AsyncFlaky) -> list[str]:
        async with httpx.AsyncClient(transport=transport) as http:
            client = AsyncClient(
                base_url=live_service.base_url, api_key=live_service.api_key, http_client=http
            )
            return [m.id for m in await client.models.list()]

    transport = AsyncFlaky()
    started = time.monotonic()
    assert MODEL in asyncio.run(scenario(transport))
    assert transport.seen == 3 and time.monotonic() - started >= 1.0


def test_retry_after_accepts_seconds_and_http_dates_and_is_capped() -> None:
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT") == 0.0  # in the past
    assert parse_retry_after("soon") is None
    request = httpx.Request("GET", "http://x/models")
    limited = RateLimitError(
        "slow down",
        status_code=429,
        response=httpx.Response(429, headers={"Retry-After": "9999"}, request=request),
    )
    assert retry_delay(Options(base_url="http://x"), 0, limited) == 60.0
    assert retry_delay(Options(base_url="http://x", max_retries=0), 0, limited) is None
