"""``client.keys`` and ``client.tenants``: API keys and tenants (quotas, weights), for admin
keys; ``client.tenants.me()`` for any key."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

from glmft_client._http import AsyncHTTP, RequestSpec, SyncHTTP
from glmft_client.team_types import (
    ApiKey,
    ApiKeyCreated,
    KeyCreateRequest,
    Scope,
    Tenant,
    TenantUpdateRequest,
)
from glmft_client.types import ListOf


def _create_spec(tenant: str, scopes: Sequence[Scope], name: str) -> RequestSpec:
    body = KeyCreateRequest(tenant=tenant, scopes=list(scopes), name=name)
    return RequestSpec("POST", "/keys", json=body.model_dump())


def _list_spec(tenant: str | None, include_revoked: bool) -> RequestSpec:
    params = {"tenant": tenant, "include_revoked": str(include_revoked).lower()}
    return RequestSpec("GET", "/keys", params=params)


def _update_spec(tenant: str, **fields: Any) -> RequestSpec:
    body = TenantUpdateRequest(**fields).model_dump(exclude_none=True)
    if "quotas" in fields and fields["quotas"] is not None:
        body["quotas"] = fields["quotas"]  # a None inside means: no limit
    return RequestSpec("PATCH", f"/tenants/{tenant}", json=body)


class Keys:
    """API keys (needs a key with the ``admin`` scope)."""

    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def create(
        self, *, tenant: str, scopes: Sequence[Scope] = ("read", "write"), name: str = ""
    ) -> ApiKeyCreated:
        """Make a key for ``tenant``; ``.key`` holds it, shown this once."""
        response = self._http.request(_create_spec(tenant, scopes, name))
        return ApiKeyCreated.model_validate(response.json())

    def list(
        self, *, tenant: str | None = None, include_revoked: bool = True
    ) -> builtins.list[ApiKey]:
        """Keys, newest first (prefix, scopes, last use; never the key)."""
        response = self._http.request(_list_spec(tenant, include_revoked))
        return ListOf[ApiKey].model_validate(response.json()).data

    def retrieve(self, key_id: str) -> ApiKey:
        """One key, by id or shown prefix."""
        return ApiKey.model_validate(
            self._http.request(RequestSpec("GET", f"/keys/{key_id}")).json()
        )

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key: it answers 401 from the next request on."""
        response = self._http.request(RequestSpec("DELETE", f"/keys/{key_id}"))
        return ApiKey.model_validate(response.json())


class AsyncKeys:
    """The async flavour of :class:`Keys`."""

    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def create(
        self, *, tenant: str, scopes: Sequence[Scope] = ("read", "write"), name: str = ""
    ) -> ApiKeyCreated:
        """See :meth:`Keys.create`."""
        response = await self._http.request(_create_spec(tenant, scopes, name))
        return ApiKeyCreated.model_validate(response.json())

    async def list(
        self, *, tenant: str | None = None, include_revoked: bool = True
    ) -> builtins.list[ApiKey]:
        """See :meth:`Keys.list`."""
        response = await self._http.request(_list_spec(tenant, include_revoked))
        return ListOf[ApiKey].model_validate(response.json()).data

    async def retrieve(self, key_id: str) -> ApiKey:
        """See :meth:`Keys.retrieve`."""
        response = await self._http.request(RequestSpec("GET", f"/keys/{key_id}"))
        return ApiKey.model_validate(response.json())

    async def revoke(self, key_id: str) -> ApiKey:
        """See :meth:`Keys.revoke`."""
        response = await self._http.request(RequestSpec("DELETE", f"/keys/{key_id}"))
        return ApiKey.model_validate(response.json())


class Tenants:
    """Tenants: your own (``me``), and every one for admin keys."""

    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def me(self) -> Tenant:
        """Your tenant: its quotas, what it uses and what it may."""
        return Tenant.model_validate(self._http.request(RequestSpec("GET", "/tenant")).json())

    def list(self) -> builtins.list[Tenant]:
        """Every tenant (admin)."""
        response = self._http.request(RequestSpec("GET", "/tenants"))
        return ListOf[Tenant].model_validate(response.json()).data

    def retrieve(self, tenant: str) -> Tenant:
        """One tenant (admin)."""
        response = self._http.request(RequestSpec("GET", f"/tenants/{tenant}"))
        return Tenant.model_validate(response.json())

    def update(
        self,
        tenant: str,
        *,
        name: str | None = None,
        weight: float | None = None,
        quotas: dict[str, int | None] | None = None,
    ) -> Tenant:
        """Set a tenant's name, weight or quota overrides (admin); ``quotas`` replaces them,
        a ``None`` value lifts that limit."""
        spec = _update_spec(tenant, name=name, weight=weight, quotas=quotas)
        return Tenant.model_validate(self._http.request(spec).json())


class AsyncTenants:
    """The async flavour of :class:`Tenants`."""

    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def me(self) -> Tenant:
        """See :meth:`Tenants.me`."""
        response = await self._http.request(RequestSpec("GET", "/tenant"))
        return Tenant.model_validate(response.json())

    async def list(self) -> builtins.list[Tenant]:
        """See :meth:`Tenants.list`."""
        response = await self._http.request(RequestSpec("GET", "/tenants"))
        return ListOf[Tenant].model_validate(response.json()).data

    async def retrieve(self, tenant: str) -> Tenant:
        """See :meth:`Tenants.retrieve`."""
        response = await self._http.request(RequestSpec("GET", f"/tenants/{tenant}"))
        return Tenant.model_validate(response.json())

    async def update(
        self,
        tenant: str,
        *,
        name: str | None = None,
        weight: float | None = None,
        quotas: dict[str, int | None] | None = None,
    ) -> Tenant:
        """See :meth:`Tenants.update`."""
        spec = _update_spec(tenant, name=name, weight=weight, quotas=quotas)
        return Tenant.model_validate((await self._http.request(spec)).json())
