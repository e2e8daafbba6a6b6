"""The SDK's teams resources against the live service: keys made and revoked by an admin key,
a read key refused a write, a quota 429 raised as ``QuotaExceededError`` without retries,
webhooks with a signed test delivery checked by ``verify_webhook``."""

from __future__ import annotations

import time

import httpx
import pytest
from glmft_client import (
    AuthenticationError,
    Client,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
)
from glmft_client.signatures import WebhookVerificationError, verify_webhook

from core.webhooks import new_secret, sign
from tests.live_service import ADMIN_API_KEY, MODEL, LiveService, demo_jsonl
from tests.webhook_receiver import webhook_receiver


class Counting(httpx.HTTPTransport):
    """Counts the requests it forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return super().handle_request(request)


def test_admins_manage_keys_and_quotas_through_the_sdk(live_service: LiveService) -> None:
    with Client(base_url=live_service.base_url, api_key=ADMIN_API_KEY) as admin:
        reader = admin.keys.create(tenant="sdk-team", scopes=["read"], name="dashboards")
        writer = admin.keys.create(tenant="sdk-team", scopes=["write"])
        assert reader.key.startswith(reader.prefix) and reader.scopes == ["read"]
        assert {k.id for k in admin.keys.list(tenant="sdk-team")} == {reader.id, writer.id}
        tenant = admin.tenants.update("sdk-team", quotas={"max_queued_jobs": 0})
        assert tenant.quotas["max_queued_jobs"].allowed == 0
    transport = Counting()
    http = httpx.Client(transport=transport)
    with Client(base_url=live_service.base_url, api_key=writer.key, http_client=http) as team:
        dataset = team.datasets.upload(demo_jsonl(), filename="train.jsonl")
        sent = transport.sent
        with pytest.raises(QuotaExceededError) as refused:
            team.jobs.create(model=MODEL, method="lora", training_dataset=dataset.id, gpus=0)
        assert isinstance(refused.value, RateLimitError) and refused.value.status_code == 429
        assert (refused.value.quota, refused.value.used, refused.value.allowed) == (
            "max_queued_jobs",
            0,
            0,
        )
        assert transport.sent == sent + 1  # a quota is not retried
        assert team.tenants.me().quotas["max_queued_jobs"].used == 0
    http.close()
    with Client(base_url=live_service.base_url, api_key=reader.key) as read_only:
        assert read_only.jobs.list().data == []
        with pytest.raises(PermissionDeniedError):
            read_only.webhooks.create(url="http://127.0.0.1:9/h")
    with Client(base_url=live_service.base_url, api_key=ADMIN_API_KEY) as admin:
        assert admin.keys.revoke(reader.id).revoked_at is not None
    with (
        Client(base_url=live_service.base_url, api_key=reader.key) as revoked,
        pytest.raises(AuthenticationError),
    ):
        revoked.jobs.list()


def test_webhooks_through_the_sdk_and_their_signatures(live_service: LiveService) -> None:
    with (
        webhook_receiver() as (url, received),
        Client(base_url=live_service.base_url, api_key=live_service.api_key) as client,
    ):
        hook = client.webhooks.create(url=url, events=["job.succeeded", "job.failed"])
        received.secret = hook.secret
        delivery = client.webhooks.test(hook.id)
        assert (delivery.state, delivery.last_status) == ("delivered", 200)
        assert received.accepted_ids() == [delivery.id]
        log = client.webhooks.deliveries(hook.id)
        assert [d.id for d in log.data] == [delivery.id] and log.data[0].log[0].status_code == 200
        client.webhooks.delete(hook.id)
        assert hook.id not in {h.id for h in client.webhooks.list()}
    # the SDK's check agrees with the server's signature, and refuses tampering and replays
    secret, body, now = new_secret(), b'{"type":"job.succeeded"}', int(time.time())
    headers = {"Webhook-Id": "msg-1", "Webhook-Timestamp": str(now)}
    headers["Webhook-Signature"] = sign(secret, "msg-1", now, body)
    verify_webhook(secret, headers, body)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(secret, headers, body + b"x")
    with pytest.raises(WebhookVerificationError, match="replay"):
        verify_webhook(secret, headers, body, now=now + 3600)
