"""``/webhooks`` (SQLite and PostgreSQL, real Redis): target URLs checked, the secret shown
once, a signed test delivery to a real receiver on loopback, the delivery log, job events
written to the outbox by the API, deletion."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.main import create_app
from core.settings import Settings, WebhookSettings
from tests.api.helpers import assert_error, create_job, dataset_id
from tests.webhook_receiver import webhook_receiver


def test_webhooks_are_made_tested_logged_and_deleted(client: TestClient) -> None:
    for url, reason in [
        ("ftp://example.com/h", "http or https"),
        ("https://me:secret@example.com/h", "credentials"),
    ]:
        error = assert_error(
            client.post("/webhooks", json={"url": url}), 422, "invalid_webhook_url"
        )
        assert reason in error["message"] and error["param"] == "url"
    bad_event = client.post("/webhooks", json={"url": "http://127.0.0.1:9/", "events": ["x"]})
    assert_error(bad_event, 422, "invalid_request", "events")
    with webhook_receiver() as (url, received):
        made = client.post("/webhooks", json={"url": url, "description": "ci"})
        assert made.status_code == 201, made.text
        hook = made.json()
        assert hook["secret"].startswith("whsec_") and hook["events"] == []
        received.secret = hook["secret"]
        assert "secret" not in client.get(f"/webhooks/{hook['id']}").json()
        tested = client.post(f"/webhooks/{hook['id']}/test")
        assert tested.status_code == 200, tested.text
        delivery = tested.json()
        assert (delivery["event"], delivery["state"], delivery["last_status"]) == (
            "webhook.test",
            "delivered",
            200,
        )
        assert [a["status_code"] for a in delivery["log"]] == [200]
        assert received.accepted_ids() == [delivery["id"]] and received.bad_signatures == 0
        received.status = 500
        failed = client.post(f"/webhooks/{hook['id']}/test").json()
        assert (failed["state"], failed["log"][0]["status_code"]) == ("failed", 500)
    # a job's creation is in the outbox for the workers' dispatcher to send
    job = create_job(client, dataset_id(client)).json()
    log = client.get(f"/webhooks/{hook['id']}/deliveries", params={"event": "job.queued"})
    [queued] = log.json()["data"]
    assert queued["state"] == "pending" and queued["payload"]["data"]["job"]["id"] == job["id"]
    page = client.get(f"/webhooks/{hook['id']}/deliveries", params={"limit": 2}).json()
    assert len(page["data"]) == 2 and page["has_more"] and page["next_cursor"]
    assert client.delete(f"/webhooks/{hook['id']}").status_code == 204
    assert_error(client.get(f"/webhooks/{hook['id']}"), 404, "webhook_not_found")
    assert client.get("/webhooks").json()["data"] == []


def test_private_targets_are_refused_unless_allowed(settings: Settings) -> None:
    strict = settings.model_copy(update={"webhooks": WebhookSettings(allow_private_targets=False)})
    with TestClient(create_app(strict), raise_server_exceptions=False) as client:
        for url in ("http://127.0.0.1:8000/h", "http://10.0.0.5/h", "http://[::1]/h"):
            error = assert_error(
                client.post("/webhooks", json={"url": url}), 422, "invalid_webhook_url"
            )
            assert "loopback, private or reserved" in error["message"]
