"""``client.webhooks``: your tenant's endpoints for job events, a test delivery, the log.
``glmft_client.signatures.verify_webhook`` checks a delivery on the receiving side."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from glmft_client._http import AsyncHTTP, RequestSpec, SyncHTTP
from glmft_client.team_types import (
    Webhook,
    WebhookCreated,
    WebhookCreateRequest,
    WebhookDelivery,
)
from glmft_client.types import ListOf, Page


def _create_spec(url: str, events: Sequence[str], description: str) -> RequestSpec:
    body = WebhookCreateRequest(url=url, events=list(events), description=description)
    return RequestSpec("POST", "/webhooks", json=body.model_dump())


def _deliveries_spec(
    webhook_id: str, state: str | None, event: str | None, after: str | None, limit: int
) -> RequestSpec:
    params = {"state": state, "event": event, "after": after, "limit": limit}
    return RequestSpec("GET", f"/webhooks/{webhook_id}/deliveries", params=params)


class Webhooks:
    """Webhooks of your tenant."""

    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def create(
        self, *, url: str, events: Sequence[str] = (), description: str = ""
    ) -> WebhookCreated:
        """Send job events (``events``; empty: all) to ``url``; ``.secret`` is shown once."""
        response = self._http.request(_create_spec(url, events, description))
        return WebhookCreated.model_validate(response.json())

    def list(self) -> builtins.list[Webhook]:
        """Your webhooks, newest first."""
        response = self._http.request(RequestSpec("GET", "/webhooks"))
        return ListOf[Webhook].model_validate(response.json()).data

    def retrieve(self, webhook_id: str) -> Webhook:
        """One webhook."""
        response = self._http.request(RequestSpec("GET", f"/webhooks/{webhook_id}"))
        return Webhook.model_validate(response.json())

    def delete(self, webhook_id: str) -> None:
        """Stop sending to it."""
        self._http.request(RequestSpec("DELETE", f"/webhooks/{webhook_id}"))

    def test(self, webhook_id: str) -> WebhookDelivery:
        """Send a signed ``webhook.test`` event now; the delivery with its status code."""
        response = self._http.request(RequestSpec("POST", f"/webhooks/{webhook_id}/test"))
        return WebhookDelivery.model_validate(response.json())

    def deliveries(
        self,
        webhook_id: str,
        *,
        state: str | None = None,
        event: str | None = None,
        after: str | None = None,
        limit: int = 20,
    ) -> Page[WebhookDelivery]:
        """The delivery log, newest first."""
        response = self._http.request(_deliveries_spec(webhook_id, state, event, after, limit))
        return Page[WebhookDelivery].model_validate(response.json())


class AsyncWebhooks:
    """The async flavour of :class:`Webhooks`."""

    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def create(
        self, *, url: str, events: Sequence[str] = (), description: str = ""
    ) -> WebhookCreated:
        """See :meth:`Webhooks.create`."""
        response = await self._http.request(_create_spec(url, events, description))
        return WebhookCreated.model_validate(response.json())

    async def list(self) -> builtins.list[Webhook]:
        """See :meth:`Webhooks.list`."""
        response = await self._http.request(RequestSpec("GET", "/webhooks"))
        return ListOf[Webhook].model_validate(response.json()).data

    async def retrieve(self, webhook_id: str) -> Webhook:
        """See :meth:`Webhooks.retrieve`."""
        response = await self._http.request(RequestSpec("GET", f"/webhooks/{webhook_id}"))
        return Webhook.model_validate(response.json())

    async def delete(self, webhook_id: str) -> None:
        """See :meth:`Webhooks.delete`."""
        await self._http.request(RequestSpec("DELETE", f"/webhooks/{webhook_id}"))

    async def test(self, webhook_id: str) -> WebhookDelivery:
        """See :meth:`Webhooks.test`."""
        response = await self._http.request(RequestSpec("POST", f"/webhooks/{webhook_id}/test"))
        return WebhookDelivery.model_validate(response.json())

    async def deliveries(
        self,
        webhook_id: str,
        *,
        state: str | None = None,
        event: str | None = None,
        after: str | None = None,
        limit: int = 20,
    ) -> Page[WebhookDelivery]:
        """See :meth:`Webhooks.deliveries`."""
        spec = _deliveries_spec(webhook_id, state, event, after, limit)
        return Page[WebhookDelivery].model_validate((await self._http.request(spec)).json())
