"""``client.adapters``: fine-tuned adapters, loading them into the chat engine, promoting a
job's checkpoint to an adapter."""

from __future__ import annotations

import builtins

from glmft_client._http import AsyncHTTP, RequestSpec, SyncHTTP
from glmft_client.types import Adapter, AdapterLoadRequest, ListOf


def _load_spec(adapter_id: str, pin: bool) -> RequestSpec:
    body = AdapterLoadRequest(pin=pin).model_dump()
    return RequestSpec("POST", f"/adapters/{adapter_id}/load", json=body)


def _promote_spec(job_id: str, step: int) -> RequestSpec:
    return RequestSpec("POST", f"/jobs/{job_id}/checkpoints/{step}/promote")


class Adapters:
    """Adapters (one per succeeded job, plus promoted checkpoints)."""

    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def list(self) -> builtins.list[Adapter]:
        """Your adapters."""
        response = self._http.request(RequestSpec("GET", "/adapters"))
        return ListOf[Adapter].model_validate(response.json()).data

    def retrieve(self, adapter_id: str) -> Adapter:
        """One adapter."""
        response = self._http.request(RequestSpec("GET", f"/adapters/{adapter_id}"))
        return Adapter.model_validate(response.json())

    def delete(self, adapter_id: str) -> None:
        """Delete an adapter."""
        self._http.request(RequestSpec("DELETE", f"/adapters/{adapter_id}"))

    def load(self, adapter_id: str, *, pin: bool = False) -> Adapter:
        """Load it into the chat engine now; ``pin`` keeps it loaded."""
        return Adapter.model_validate(self._http.request(_load_spec(adapter_id, pin)).json())

    def unload(self, adapter_id: str) -> Adapter:
        """Free its memory in the chat engine."""
        response = self._http.request(RequestSpec("POST", f"/adapters/{adapter_id}/unload"))
        return Adapter.model_validate(response.json())

    def promote(self, job_id: str, step: int) -> Adapter:
        """Make the job's checkpoint at ``step`` an adapter of its own."""
        return Adapter.model_validate(self._http.request(_promote_spec(job_id, step)).json())


class AsyncAdapters:
    """The async flavour of :class:`Adapters`."""

    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def list(self) -> builtins.list[Adapter]:
        """See :meth:`Adapters.list`."""
        response = await self._http.request(RequestSpec("GET", "/adapters"))
        return ListOf[Adapter].model_validate(response.json()).data

    async def retrieve(self, adapter_id: str) -> Adapter:
        """See :meth:`Adapters.retrieve`."""
        response = await self._http.request(RequestSpec("GET", f"/adapters/{adapter_id}"))
        return Adapter.model_validate(response.json())

    async def delete(self, adapter_id: str) -> None:
        """See :meth:`Adapters.delete`."""
        await self._http.request(RequestSpec("DELETE", f"/adapters/{adapter_id}"))

    async def load(self, adapter_id: str, *, pin: bool = False) -> Adapter:
        """See :meth:`Adapters.load`."""
        response = await self._http.request(_load_spec(adapter_id, pin))
        return Adapter.model_validate(response.json())

    async def unload(self, adapter_id: str) -> Adapter:
        """See :meth:`Adapters.unload`."""
        response = await self._http.request(RequestSpec("POST", f"/adapters/{adapter_id}/unload"))
        return Adapter.model_validate(response.json())

    async def promote(self, job_id: str, step: int) -> Adapter:
        """See :meth:`Adapters.promote`."""
        response = await self._http.request(_promote_spec(job_id, step))
        return Adapter.model_validate(response.json())
