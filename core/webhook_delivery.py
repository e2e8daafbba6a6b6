"""Sending webhook deliveries from the outbox, with retries and a log of every attempt.

A dispatcher (a thread of each worker node, ``worker.webhooks``) calls :func:`deliver_due`
every few seconds. Due deliveries are claimed in SQL (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
then a conditional UPDATE), so several dispatchers never send one attempt twice; the claim
pushes ``next_attempt_at`` a lease ahead, so a delivery whose sender died is retried after the
lease. A 2xx answer delivers it; anything else is retried after ``retry_base_s * 2**(n-1)``
(at most ``retry_max_s``, with jitter) until ``max_attempts``, then it is ``failed``. Redirects
are not followed, and the target's addresses are checked again before each attempt (a name
may resolve elsewhere than when the webhook was made).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from core.errors import InvalidWebhookUrl
from core.models import utcnow
from core.settings import Settings
from core.team_models import Webhook, WebhookAttempt, WebhookDelivery
from core.webhooks import TEST_EVENT, check_url, sign

logger = logging.getLogger(__name__)
USER_AGENT = "glmft-webhooks/0.1"


@dataclass(frozen=True)
class Claimed:
    """One attempt to make: the delivery as claimed (``attempts`` counts this one) and where."""

    delivery_id: str
    attempt: int
    event: str
    payload: dict[str, Any]
    url: str | None  # None: the webhook was deleted
    secret: str


@dataclass(frozen=True)
class Answer:
    status: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def claim_due(session: Session, settings: Settings, limit: int = 20) -> list[Claimed]:
    """Take up to ``limit`` due pending deliveries, oldest first, for one attempt each."""
    now = utcnow()
    rows = session.exec(
        select(WebhookDelivery)
        .where(WebhookDelivery.state == "pending", col(WebhookDelivery.next_attempt_at) <= now)
        .order_by(col(WebhookDelivery.created_at), col(WebhookDelivery.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    lease = now + timedelta(seconds=settings.webhooks.lease_s)
    claimed = []
    for row in rows:
        attempt = row.attempts + 1  # read first: the UPDATE below refreshes ``row``
        result = session.execute(
            update(WebhookDelivery)
            .where(col(WebhookDelivery.id) == row.id, col(WebhookDelivery.attempts) == attempt - 1)
            .where(col(WebhookDelivery.state) == "pending")
            .values(attempts=attempt, next_attempt_at=lease)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            continue  # another dispatcher took it (SQLite: no row locks)
        hook = session.get(Webhook, row.webhook_id)
        live = hook is not None and hook.deleted_at is None
        claimed.append(
            Claimed(
                row.id,
                attempt,
                row.event,
                dict(row.payload),
                hook.url if live and hook else None,
                hook.secret if hook else "",
            )
        )
    session.commit()
    return claimed


def send(client: httpx.Client, settings: Settings, item: Claimed) -> Answer:
    """POST one signed attempt; never raises (the failure is the answer)."""
    started = time.monotonic()
    if item.url is None:
        return Answer(None, "webhook deleted", 0)
    try:
        check_url(item.url, allow_private=settings.private_webhook_targets)
    except InvalidWebhookUrl as exc:
        return Answer(None, exc.message[:500], 0)
    body = json.dumps(item.payload, separators=(",", ":"), ensure_ascii=False).encode()
    stamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": item.delivery_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(item.secret, item.delivery_id, stamp, body),
    }
    try:
        response = client.post(item.url, content=body, headers=headers)
        status, error = response.status_code, None
    except httpx.HTTPError as exc:
        status, error = None, f"{type(exc).__name__}: {exc}"[:500]
    return Answer(status, error, int((time.monotonic() - started) * 1000))


def backoff_s(settings: Settings, attempt: int) -> float:
    """The wait after failed attempt number ``attempt`` (1-based), with +-20% jitter."""
    hooks = settings.webhooks
    base = min(hooks.retry_max_s, hooks.retry_base_s * 2 ** (attempt - 1))
    return base * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not cryptography


def record(
    session: Session, settings: Settings, item: Claimed, answer: Answer, *, final: bool = False
) -> str:
    """Log the attempt and move the delivery on: delivered, failed, or due again later.
    ``final`` makes a failure final (a test delivery is tried once). Returns the new state."""
    now = utcnow()
    session.add(
        WebhookAttempt(
            delivery_id=item.delivery_id,
            attempt=item.attempt,
            status_code=answer.status,
            error=answer.error,
            duration_ms=answer.duration_ms,
        )
    )
    values: dict[str, Any] = {"last_status": answer.status, "last_error": answer.error}
    if answer.ok:
        values.update(state="delivered", delivered_at=now)
    elif final or item.url is None or item.attempt >= settings.webhooks.max_attempts:
        values.update(state="failed")
    else:
        values.update(next_attempt_at=now + timedelta(seconds=backoff_s(settings, item.attempt)))
    session.execute(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.id) == item.delivery_id)
        .where(col(WebhookDelivery.attempts) == item.attempt)  # still this attempt's
        .values(**values)
    )
    session.commit()
    return str(values.get("state", "pending"))


def deliver_due(
    engine: Engine, settings: Settings, client: httpx.Client, stop: threading.Event | None = None
) -> int:
    """One round of the dispatcher: claim what is due, send it, record it. Returns how many
    attempts were made. Once ``stop`` is set, the claimed deliveries not sent yet are handed
    back (due at once) instead."""
    hooks = settings.webhooks
    # few enough that the last is sent before its lease runs out, even if each one times out
    batch = max(1, int(hooks.lease_s // (hooks.timeout_s + 1)))
    with Session(engine, expire_on_commit=False) as session:
        items = claim_due(session, settings, limit=min(20, batch))
        for index, item in enumerate(items):
            if stop is not None and stop.is_set():
                release(session, items[index:])
                return index
            answer = send(client, settings, item)
            state = record(session, settings, item, answer)
            logger.info(
                "webhook %s %s attempt %d: %s -> %s",
                item.delivery_id,
                item.event,
                item.attempt,
                answer.status or answer.error,
                state,
            )
    return len(items)


def release(session: Session, items: list[Claimed]) -> None:
    """Hand claimed deliveries back unsent: due now, their attempt not counted."""
    for item in items:
        session.execute(
            update(WebhookDelivery)
            .where(col(WebhookDelivery.id) == item.delivery_id)
            .where(col(WebhookDelivery.attempts) == item.attempt)
            .values(attempts=item.attempt - 1, next_attempt_at=utcnow())
        )
    session.commit()


def send_test(session: Session, settings: Settings, hook: Webhook) -> WebhookDelivery:
    """Send a ``webhook.test`` event to ``hook`` now, once, and log it like any delivery."""
    now = utcnow()
    payload = {"type": TEST_EVENT, "timestamp": now.isoformat(), "data": {"webhook": hook.id}}
    delivery = WebhookDelivery(
        webhook_id=hook.id,
        tenant_id=hook.tenant_id,
        event=TEST_EVENT,
        payload=payload,
        attempts=1,
        next_attempt_at=now + timedelta(seconds=settings.webhooks.lease_s),
    )
    session.add(delivery)
    session.commit()
    item = Claimed(delivery.id, 1, TEST_EVENT, payload, hook.url, hook.secret)
    with make_client(settings) as client:
        answer = send(client, settings, item)
    record(session, settings, item, answer, final=True)
    session.refresh(delivery)
    return delivery


def make_client(settings: Settings) -> httpx.Client:
    """The dispatcher's HTTP client: the settings' timeout, redirects not followed."""
    return httpx.Client(timeout=settings.webhooks.timeout_s, follow_redirects=False)
