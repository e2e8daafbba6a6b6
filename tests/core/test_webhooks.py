"""Webhooks in the store, on SQLite and PostgreSQL, against a real receiver on loopback: the
Standard Webhooks signature and replay window, target URL rules, deliveries made in the same
commit as the transition they report, retries with backoff until a 2xx, the attempt log."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from core.errors import InvalidWebhookUrl
from core.jobs import JobState, transition
from core.models import Dataset, Job, utcnow
from core.settings import Settings, WebhookSettings
from core.team_models import Webhook, WebhookAttempt, WebhookDelivery
from core.webhook_delivery import backoff_s, claim_due, deliver_due, send_test
from core.webhooks import check_url, new_secret, sign, verify
from tests.webhook_receiver import webhook_receiver

SETTINGS = Settings(
    allow_anonymous=True,  # loopback targets allowed
    webhooks=WebhookSettings(retry_base_s=0.2, retry_max_s=0.5, max_attempts=3, timeout_s=5),
)


def test_signature_and_replay_window() -> None:
    secret = new_secret()
    body = b'{"type":"job.succeeded"}'
    now = int(time.time())
    headers = {
        "webhook-id": "msg-1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(secret, "msg-1", now, body),
    }
    verify(secret, headers, body)
    # the Standard Webhooks construction: base64 HMAC-SHA256 of "id.timestamp.body"
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, f"msg-1.{now}.".encode() + body, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()
    with pytest.raises(ValueError, match="no valid signature"):
        verify(secret, headers, body + b" ")
    with pytest.raises(ValueError, match="no valid signature"):
        verify(new_secret(), headers, body)
    with pytest.raises(ValueError, match="replay window"):
        verify(secret, headers, body, now=now + 301)


def test_target_urls_are_checked() -> None:
    for bad, reason in [
        ("ftp://example.com/x", "http or https"),
        ("https://user:pw@example.com/x", "credentials"),
        ("http:///x", "host"),
        ("https://example.com/x#frag", "fragment"),
        ("http://127.0.0.1:9/x", "loopback, private"),
        ("http://localhost/x", "loopback, private"),
        ("http://10.1.2.3/x", "loopback, private"),
        ("http://169.254.169.254/latest/meta-data", "loopback, private"),
        ("http://[::1]/x", "loopback, private"),
        ("http://[::ffff:127.0.0.1]/x", "loopback, private"),
    ]:
        with pytest.raises(InvalidWebhookUrl, match=reason):
            check_url(bad, allow_private=False)
    assert check_url("http://127.0.0.1:9/x", allow_private=True) == "http://127.0.0.1:9/x"
    assert check_url("https://93.184.215.14/hook", allow_private=False)


def _webhook(
    session: Session, url: str, events: list[str] | None = None, secret: str | None = None
) -> Webhook:
    hook = Webhook(tenant_id="t", url=url, events=events or [], secret=secret or new_secret())
    session.add(hook)
    session.commit()
    return hook


def _queued_job(session: Session, tenant: str = "t") -> Job:
    dataset = Dataset(tenant_id=tenant, filename="t.jsonl", path="/x", bytes=1, sha256="0")
    session.add(dataset)
    session.commit()
    job = Job(
        tenant_id=tenant, state="queued", model="m", method="lora", training_dataset_id=dataset.id
    )
    session.add(job)
    session.commit()
    return job


def _drain(engine: Engine, client: httpx.Client, until: float = 10.0) -> None:
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        with Session(engine) as session:
            pending = session.exec(
                select(WebhookDelivery).where(WebhookDelivery.state == "pending")
            ).all()
        if not pending:
            return
        if not deliver_due(engine, SETTINGS, client):
            time.sleep(0.05)
    raise AssertionError("deliveries still pending")


def test_transitions_make_deliveries_that_are_retried_until_accepted(engine: Engine) -> None:
    with webhook_receiver() as (url, received), Session(engine, expire_on_commit=False) as session:
        hook = _webhook(session, url)
        only_final = _webhook(session, url, ["job.succeeded"], secret=hook.secret)
        received.secret = hook.secret
        job = _queued_job(session)
        _queued_job(session, tenant="someone-else")  # another tenant's events go elsewhere
        transition(session, job.id, JobState.RUNNING, from_states=[JobState.QUEUED])
        transition(session, job.id, JobState.SUCCEEDED)
        rows = session.exec(select(WebhookDelivery).order_by(col(WebhookDelivery.created_at)))
        made = [(r.webhook_id, r.event) for r in rows.all()]
        assert made == [
            (hook.id, "job.running"),
            (hook.id, "job.succeeded"),
            (only_final.id, "job.succeeded"),
        ]
        received.status = 503  # the receiver is down: every attempt fails and is logged
        with httpx.Client(timeout=5) as client:
            assert deliver_due(engine, SETTINGS, client) == 3
            assert received.accepted == []
            received.status = 200
            _drain(engine, client)
        ids = received.accepted_ids()
        assert len(ids) == len(set(ids)) == 3 and received.bad_signatures == 0
        assert sorted(received.events()) == ["job.running", "job.succeeded", "job.succeeded"]
        payload = next(p["body"] for p in received.accepted if p["body"]["type"] == "job.running")
        assert (
            payload["data"]["job"]["id"] == job.id and payload["data"]["job"]["state"] == "running"
        )
        attempts = session.exec(select(WebhookAttempt)).all()
        by_delivery: dict[str, list[int | None]] = {}
        for attempt in sorted(attempts, key=lambda a: a.attempt):
            by_delivery.setdefault(attempt.delivery_id, []).append(attempt.status_code)
        assert sorted(by_delivery.values()) == [[503, 200]] * 3
        assert set(by_delivery) == set(ids)  # the webhook-id is the delivery's id


def test_a_delivery_fails_after_its_attempts_and_a_dead_sender_is_retried(engine: Engine) -> None:
    with webhook_receiver() as (url, received), Session(engine, expire_on_commit=False) as session:
        hook = _webhook(session, url)
        received.secret, received.status = hook.secret, 500
        job = _queued_job(session)
        transition(session, job.id, JobState.CANCELLED)
        with httpx.Client(timeout=5) as client:
            _drain(engine, client)
        delivery = session.exec(select(WebhookDelivery)).one()
        assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 3, 500)
        assert len(received.posts) == 3
        # a claimed delivery whose sender died is due again once its lease has passed
        transition(session, job.id, JobState.QUEUED)
        claimed = claim_due(session, SETTINGS)
        assert [c.event for c in claimed] == ["job.queued"] and claim_due(session, SETTINGS) == []
        session.execute(
            update(WebhookDelivery)
            .where(col(WebhookDelivery.id) == claimed[0].delivery_id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
        again = claim_due(session, SETTINGS)
        assert [(c.delivery_id, c.attempt) for c in again] == [(claimed[0].delivery_id, 2)]


def test_test_delivery_is_sent_once_and_logged(engine: Engine) -> None:
    with webhook_receiver() as (url, received), Session(engine, expire_on_commit=False) as session:
        hook = _webhook(session, url)
        received.secret = hook.secret
        delivery = send_test(session, SETTINGS, hook)
        assert (delivery.state, delivery.last_status, delivery.attempts) == ("delivered", 200, 1)
        assert received.events() == ["webhook.test"]
        received.status = 418
        failed = send_test(session, SETTINGS, hook)
        assert (failed.state, failed.last_status) == ("failed", 418)
        received.status = 302  # a redirect (here to the receiver itself) is not followed
        moved = send_test(session, SETTINGS, hook)
        assert (moved.state, moved.last_status) == ("failed", 302)
        strict = Settings(webhooks=WebhookSettings(allow_private_targets=False))
        refused = send_test(session, strict, hook)  # checked again before each attempt
        assert refused.state == "failed" and "loopback" in (refused.last_error or "")
        assert len(received.posts) == 3


def test_backoff_doubles_up_to_its_cap() -> None:
    settings = Settings(webhooks=WebhookSettings(retry_base_s=10, retry_max_s=60))
    waits = [backoff_s(settings, n) for n in range(1, 6)]
    assert 8 <= waits[0] <= 12 and 16 <= waits[1] <= 24 and 32 <= waits[2] <= 48
    assert all(48 <= w <= 72 for w in waits[3:])
