"""Webhooks: the events, the Standard Webhooks signature, target URL rules and the outbox.

Every job event a tenant's webhooks subscribe to becomes one ``webhook_deliveries`` row per
webhook, added in the same transaction as the change it reports (a state transition, a
recorded checkpoint or eval), so an event is never lost and never made twice; the dispatcher
(``core.webhook_delivery``) sends it until it is delivered.

Signatures follow Standard Webhooks (as OpenAI's do): headers ``webhook-id`` (the delivery id,
the same on every attempt), ``webhook-timestamp`` (Unix seconds of this attempt) and
``webhook-signature: v1,<base64 HMAC-SHA256>`` over ``"{id}.{timestamp}.{body}"``, keyed by the
base64-decoded part of the secret after ``whsec_``. Receivers check the signature, refuse a
timestamp outside their replay window (``verify``: 5 minutes) and deduplicate on the id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from core.errors import Invalid, InvalidWebhookUrl
from core.models import Job, utcnow
from core.team_models import Webhook, WebhookDelivery

JOB_EVENTS = (
    "job.queued",
    "job.running",
    "job.checkpoint",
    "job.eval",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
)
TEST_EVENT = "webhook.test"
STATE_EVENTS = {"queued", "running", "succeeded", "failed", "cancelled"}
SECRET_PREFIX = "whsec_"
TOLERANCE_S = 300


def new_secret() -> str:
    """A signing secret, ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check a received delivery; raises ``ValueError`` for a bad signature or a timestamp
    outside ``tolerance_s`` (a replay). ``headers`` must be looked up lower-case."""
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit():
        raise ValueError("missing webhook-id or webhook-timestamp")
    if abs((now if now is not None else time.time()) - int(stamp)) > tolerance_s:
        raise ValueError("timestamp outside the replay window")
    expected = sign(secret, msg_id, int(stamp), body).split(",", 1)[1]
    for candidate in headers.get("webhook-signature", "").split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise ValueError("no valid signature")


def check_events(events: list[str]) -> list[str]:
    """The subscribed kinds in canonical order (empty: all); raises ``Invalid`` for others."""
    unknown = sorted(set(events) - set(JOB_EVENTS))
    if unknown:
        raise Invalid(
            f"unknown event {unknown[0]!r}; known: {', '.join(JOB_EVENTS)}", param="events"
        )
    return [e for e in JOB_EVENTS if e in events]


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str, *, allow_private: bool) -> str:
    """``url`` if a webhook may target it: http or https, a host, no credentials, and unless
    ``allow_private``, no address that is loopback, private, link-local or reserved (every
    address the name resolves to is checked). Raises ``InvalidWebhookUrl``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookUrl(f"not a URL: {exc}", param="url") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidWebhookUrl("a webhook URL must be http or https", param="url")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhookUrl("a webhook URL must not carry credentials", param="url")
    if not parts.hostname:
        raise InvalidWebhookUrl("a webhook URL needs a host", param="url")
    if parts.fragment:
        raise InvalidWebhookUrl("a webhook URL has no #fragment", param="url")
    if allow_private:
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, port or 443, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise InvalidWebhookUrl(f"host {parts.hostname!r} does not resolve", param="url") from exc
    for info in infos:
        if _private(str(info[4][0])):
            raise InvalidWebhookUrl(
                f"host {parts.hostname!r} resolves to {info[4][0]}, a loopback, private or "
                "reserved address; this server does not send webhooks there",
                param="url",
            )
    return url


def job_view(job: Job) -> dict[str, Any]:
    """What a job event says about the job (no paths, no config)."""
    error = None
    if job.error_code:
        error = {"code": job.error_code, "message": job.error_message, "user_error": job.user_error}
    return {
        "id": job.id,
        "state": job.state,
        "model": job.model,
        "method": job.method,
        "attempt": job.attempt,
        "step": job.step,
        "max_steps": job.max_steps,
        "adapter_id": job.adapter_id,
        "error": error,
        "metadata": job.user_metadata,
    }


#: a tenant's webhooks, as plain rows (built once: building it costs more than its round trip)
_LIVE_HOOKS = select(col(Webhook.id), col(Webhook.events)).where(
    Webhook.tenant_id == bindparam("tenant"), col(Webhook.deleted_at).is_(None)
)


def enqueue(session: Session, tenant: str, event: str, data: dict[str, Any]) -> int:
    """Add one delivery of ``event`` per webhook of ``tenant`` that subscribes to it; the
    caller commits them with the change they report. Returns how many."""
    hooks = session.connection().execute(_LIVE_HOOKS, {"tenant": tenant}).all()
    now = utcnow()
    payload = {"type": event, "timestamp": now.isoformat(), "data": data}
    count = 0
    for hook in hooks:
        if hook.events and event not in hook.events:
            continue
        session.add(
            WebhookDelivery(
                webhook_id=hook.id,
                tenant_id=tenant,
                event=event,
                payload=payload,
                next_attempt_at=now,
            )
        )
        count += 1
    return count


def enqueue_job_state(session: Session, job_id: str, state: str) -> None:
    """The ``job.<state>`` event of a transition that just happened in this transaction."""
    if state not in STATE_EVENTS:
        return
    job = session.get(Job, job_id, populate_existing=True)
    if job is not None:
        enqueue(session, job.tenant_id, f"job.{state}", {"job": job_view(job)})
