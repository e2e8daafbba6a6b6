"""``client.models``: the registry's base models and your adapters."""

from __future__ import annotations

import builtins

from glmft_client._http import AsyncHTTP, RequestSpec, SyncHTTP
from glmft_client.types import ListOf, Model

_LIST = RequestSpec("GET", "/models")


class Models:
    """Models you can fine-tune or chat with."""

    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def list(self) -> builtins.list[Model]:
        """Base models (by name), then your adapters (newest first)."""
        return ListOf[Model].model_validate(self._http.request(_LIST).json()).data


class AsyncModels:
    """The async flavour of :class:`Models`."""

    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def list(self) -> builtins.list[Model]:
        """See :meth:`Models.list`."""
        return ListOf[Model].model_validate((await self._http.request(_LIST)).json()).data
