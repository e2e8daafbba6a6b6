"""``/webhooks``: your tenant's endpoints for job events, a test delivery, the delivery log."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response

from api.deps import SessionDep, SettingsDep, TenantDep
from api.schemas.common import ListOf, Page, error_responses
from api.schemas.teams import DeliveryPublic, WebhookCreate, WebhookCreated, WebhookPublic
from api.services import webhooks as service
from core.webhook_delivery import send_test

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
WebhookId = Annotated[str, Path(description="The webhook id.", examples=["wh-3f2a9c0d1e4b"])]


@router.post("", status_code=201, response_model=WebhookCreated, responses=error_responses())
def create_webhook(
    body: WebhookCreate, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> WebhookCreated:
    """Send your job events to `url`, signed with the `secret` in this answer (shown once)."""
    return service.create_webhook(session, settings, tenant, body)


@router.get("", response_model=ListOf[WebhookPublic], responses=error_responses())
def list_webhooks(session: SessionDep, tenant: TenantDep) -> ListOf[WebhookPublic]:
    """Your webhooks, newest first."""
    return ListOf(data=[service.webhook_public(h) for h in service.list_webhooks(session, tenant)])


@router.get("/{webhook_id}", response_model=WebhookPublic, responses=error_responses(404))
def get_webhook(webhook_id: WebhookId, session: SessionDep, tenant: TenantDep) -> WebhookPublic:
    """One webhook."""
    return service.webhook_public(service.get_webhook(session, tenant, webhook_id))


@router.delete("/{webhook_id}", status_code=204, responses=error_responses(404))
def delete_webhook(webhook_id: WebhookId, session: SessionDep, tenant: TenantDep) -> Response:
    """Stop sending to this webhook; deliveries not sent yet are dropped."""
    service.delete_webhook(session, service.get_webhook(session, tenant, webhook_id))
    return Response(status_code=204)


@router.post("/{webhook_id}/test", response_model=DeliveryPublic, responses=error_responses(404))
def test_webhook(
    webhook_id: WebhookId, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> DeliveryPublic:
    """Send a signed `webhook.test` event now, once; the answer holds the status code."""
    hook = service.get_webhook(session, tenant, webhook_id)
    return service.delivery_view(session, send_test(session, settings, hook))


@router.get(
    "/{webhook_id}/deliveries", response_model=Page[DeliveryPublic], responses=error_responses(404)
)
def list_deliveries(
    webhook_id: WebhookId,
    session: SessionDep,
    tenant: TenantDep,
    state: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    event: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> Page[DeliveryPublic]:
    """The delivery log, newest first: each event with its attempts and their status codes."""
    hook = service.get_webhook(session, tenant, webhook_id)
    rows, has_more, cursor = service.list_deliveries(
        session, hook, state=state, event=event, after=after, limit=limit
    )
    return Page(data=rows, has_more=has_more, next_cursor=cursor)
