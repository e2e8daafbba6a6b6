"""``Client`` and ``AsyncClient``: configuration plus one attribute per resource."""

from __future__ import annotations

from types import TracebackType

import httpx

from glmft_client._http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, AsyncHTTP, Options, SyncHTTP
from glmft_client.resources import (
    Adapters,
    AsyncAdapters,
    AsyncChat,
    AsyncDatasets,
    AsyncEvaluations,
    AsyncJobs,
    AsyncModels,
    Chat,
    Datasets,
    Evaluations,
    Jobs,
    Models,
)


class Client:
    """The glmft API.

    Args:
        base_url: the service's URL; default ``GLMFT_BASE_URL``, else ``http://127.0.0.1:8000``.
        api_key: default ``GLMFT_API_KEY``; none when the server runs without keys.
        timeout: seconds per request attempt.
        max_retries: retries on connection errors, 408, 429 and 5xx (with backoff,
            honouring ``Retry-After``).
        http_client: your own ``httpx.Client`` (proxies, transports); you close it.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
    ) -> None:
        options = Options.resolve(
            base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries
        )
        self._http = SyncHTTP(options, http_client)
        self.datasets = Datasets(self._http)
        self.jobs = Jobs(self._http)
        self.adapters = Adapters(self._http)
        self.chat = Chat(self._http)
        self.models = Models(self._http)
        self.evaluations = Evaluations(self._http)

    @property
    def base_url(self) -> str:
        return self._http.options.base_url

    def close(self) -> None:
        """Close the connection pool (unless it is yours)."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """The glmft API for asyncio; the arguments are those of :class:`Client`."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        options = Options.resolve(
            base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries
        )
        self._http = AsyncHTTP(options, http_client)
        self.datasets = AsyncDatasets(self._http)
        self.jobs = AsyncJobs(self._http)
        self.adapters = AsyncAdapters(self._http)
        self.chat = AsyncChat(self._http)
        self.models = AsyncModels(self._http)
        self.evaluations = AsyncEvaluations(self._http)

    @property
    def base_url(self) -> str:
        return self._http.options.base_url

    async def close(self) -> None:
        """Close the connection pool (unless it is yours)."""
        await self._http.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
