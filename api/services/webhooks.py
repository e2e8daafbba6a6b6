"""Webhooks of a tenant: made (URL checked, secret shown once), listed, deleted, tested, and
their delivery log read. Deliveries themselves are made by ``core.webhooks`` and sent by the
workers' dispatcher (``core.webhook_delivery``)."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from api.pagination import newest_first, split_page
from api.schemas.teams import (
    AttemptPublic,
    DeliveryPublic,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
)
from core.errors import Invalid, WebhookNotFound
from core.models import utcnow
from core.settings import Settings
from core.team_models import Webhook, WebhookAttempt, WebhookDelivery
from core.webhooks import check_events, check_url, new_secret


def webhook_public(hook: Webhook) -> WebhookPublic:
    return WebhookPublic(
        id=hook.id,
        url=hook.url,
        events=hook.events,
        description=hook.description,
        created_at=hook.created_at,
    )


def create_webhook(
    session: Session, settings: Settings, tenant: str, body: WebhookCreate
) -> WebhookCreated:
    """Check the URL and events, store the webhook with a fresh secret; the secret is in the
    answer this once."""
    url = check_url(body.url, allow_private=settings.private_webhook_targets)
    events = check_events(body.events)
    count = session.exec(
        select(func.count()).where(Webhook.tenant_id == tenant, col(Webhook.deleted_at).is_(None))
    ).one()
    limit = settings.webhooks.max_per_tenant
    if count >= limit:
        raise Invalid(f"a tenant may have at most {limit} webhooks", param="url")
    hook = Webhook(
        tenant_id=tenant, url=url, events=events, description=body.description, secret=new_secret()
    )
    session.add(hook)
    session.commit()
    return WebhookCreated(**webhook_public(hook).model_dump(), secret=hook.secret)


def list_webhooks(session: Session, tenant: str) -> list[Webhook]:
    """The tenant's webhooks, newest first."""
    return list(
        session.exec(
            select(Webhook)
            .where(Webhook.tenant_id == tenant, col(Webhook.deleted_at).is_(None))
            .order_by(col(Webhook.created_at).desc(), col(Webhook.id).desc())
        ).all()
    )


def get_webhook(session: Session, tenant: str, webhook_id: str) -> Webhook:
    """The caller's webhook; another tenant's or a deleted one is not found."""
    hook = session.get(Webhook, webhook_id)
    if hook is None or hook.tenant_id != tenant or hook.deleted_at is not None:
        raise WebhookNotFound(f"webhook {webhook_id} not found", param="webhook_id")
    return hook


def delete_webhook(session: Session, hook: Webhook) -> None:
    """Stop sending to it (pending deliveries fail); its row and delivery log stay in SQL."""
    hook.deleted_at = utcnow()
    session.add(hook)
    session.commit()


def delivery_public(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryPublic:
    return DeliveryPublic(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        event=delivery.event,
        state=delivery.state,
        attempts=delivery.attempts,
        last_status=delivery.last_status,
        last_error=delivery.last_error,
        next_attempt_at=delivery.next_attempt_at if delivery.state == "pending" else None,
        payload=delivery.payload,
        log=[
            AttemptPublic(
                attempt=a.attempt,
                status_code=a.status_code,
                error=a.error,
                duration_ms=a.duration_ms,
                created_at=a.created_at,
            )
            for a in attempts
        ],
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
    )


def delivery_view(session: Session, delivery: WebhookDelivery) -> DeliveryPublic:
    """One delivery with its attempts."""
    attempts = session.exec(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == delivery.id)
        .order_by(col(WebhookAttempt.attempt))
    ).all()
    return delivery_public(delivery, list(attempts))


def list_deliveries(
    session: Session,
    hook: Webhook,
    *,
    state: str | None,
    event: str | None,
    after: str | None,
    limit: int,
) -> tuple[list[DeliveryPublic], bool, str | None]:
    """The webhook's deliveries, newest first, each with its attempts."""
    statement = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)
    if state:
        statement = statement.where(WebhookDelivery.state == state)
    if event:
        statement = statement.where(WebhookDelivery.event == event)
    rows = session.exec(newest_first(statement, WebhookDelivery, after, limit)).all()
    page, has_more, cursor = split_page(rows, limit)
    attempts: dict[str, list[WebhookAttempt]] = {d.id: [] for d in page}
    if page:
        for attempt in session.exec(
            select(WebhookAttempt)
            .where(col(WebhookAttempt.delivery_id).in_(list(attempts)))
            .order_by(col(WebhookAttempt.attempt))
        ).all():
            attempts[attempt.delivery_id].append(attempt)
    return [delivery_public(d, attempts[d.id]) for d in page], has_more, cursor
