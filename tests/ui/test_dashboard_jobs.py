"""The dashboard's jobs and datasets pages in Chromium against the live service: the key
dialog, the tenant's jobs list, a finished job's curves, events, log and dataset report, a
running job's curve growing live, cancel and resume, promoting a checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import BrowserContext, Page, expect

from tests.helpers import wait_for
from tests.live_service import LONG_OVERRIDES, MODEL, OTHER_API_KEY, LiveService
from tests.ui.conftest import FinishedJob, api, wait_for_state


def chart_data(page: Page, name: str) -> dict[str, list[Any]]:
    """``{series label: values}`` of a chart, read from its uPlot instance (x under "step")."""
    data: dict[str, list[Any]] = page.locator(f'[data-chart="{name}"] .chart').evaluate(
        """el => Object.fromEntries(el.uplot.series.map((s, i) => [s.label, el.uplot.data[i]]))"""
    )
    return data


def points(page: Page, name: str) -> int:
    return int(page.locator(f'[data-chart="{name}"]').get_attribute("data-points") or 0)


def test_the_key_dialog_and_the_tenant_jobs_list(
    context: BrowserContext, live_service: LiveService, finished_job: FinishedJob
) -> None:
    # given a browser that never saw this service: it asks for a key
    page = context.new_page()
    response = page.goto("/ui/")
    assert response is not None and response.status == 200
    assert "default-src 'self'" in response.headers["content-security-policy"]
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-error")).to_contain_text("needs an API key")
    # a wrong key is refused with the service's message
    page.fill("#key-input", "sk-wrong")
    page.click("#key-save")
    expect(page.locator("#key-error")).to_contain_text("unknown API key")
    # the right key lists the tenant's jobs, the finished one among them
    page.fill("#key-input", live_service.api_key)
    page.click("#key-save")
    expect(dialog).to_be_hidden()
    row = page.locator(f'#jobs tr[data-job="{finished_job.id}"]')
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text(MODEL)
    expect(row).to_contain_text("lora")
    expect(row).to_contain_text("4 / 4")
    expect(row).to_contain_text(finished_job.adapter_id)
    assert page.evaluate("localStorage.getItem('glmft.apiKey')") == live_service.api_key
    # the state filter asks the API for that state only
    page.select_option("#state-filter", "failed")
    expect(page.locator(f'#jobs tr[data-job="{finished_job.id}"]')).to_have_count(0)
    page.select_option("#state-filter", "succeeded")
    expect(page.locator(f'#jobs tr[data-job="{finished_job.id}"]')).to_be_visible()
    states = page.locator("#jobs tbody [data-state]").evaluate_all(
        "els => els.map(e => e.dataset.state)"
    )
    assert states and set(states) == {"succeeded"}
    # another tenant's key sees none of these jobs
    page.evaluate(f"localStorage.setItem('glmft.apiKey', {OTHER_API_KEY!r})")
    page.goto("/ui/#/jobs")
    page.reload()
    expect(page.locator("#jobs tbody")).to_contain_text("no jobs")


def test_a_finished_job_shows_its_curves_events_log_and_dataset(
    page: Page, live_service: LiveService, finished_job: FinishedJob, screenshots: Path
) -> None:
    with api(live_service) as client:
        metrics = client.get(f"/jobs/{finished_job.id}/metrics").json()["data"]
        events = client.get(f"/jobs/{finished_job.id}/events", params={"limit": 1000}).json()
        log = client.get(f"/jobs/{finished_job.id}/logs", params={"tail": 500}).text
        report = client.get(f"/datasets/{finished_job.training_dataset}/report").json()
    losses = {
        m["step"]: m["value"] for m in metrics if m["split"] == "train" and m["name"] == "loss"
    }
    rouge = {m["step"]: m["value"] for m in metrics if m["name"] == "rouge-1"}
    assert sorted(losses) == [1, 2, 3, 4] and sorted(rouge) == [2, 4]
    # when the job page opens
    page.goto(f"/ui/#/jobs/{finished_job.id}")
    expect(page.locator("h1 [data-state]")).to_have_text("succeeded")
    # then the loss curve has one point per logged step, with the logged values
    expect(page.locator('[data-chart="loss"]')).to_have_attribute("data-points", "4")
    loss = chart_data(page, "loss")
    assert loss["step"] == [1, 2, 3, 4]
    assert loss["train"] == [losses[step] for step in (1, 2, 3, 4)]
    for name in ("learning_rate", "grad_norm"):
        expect(page.locator(f'[data-chart="{name}"]')).to_have_attribute("data-points", "4")
    scores = chart_data(page, "eval")
    assert scores["step"] == [2, 4] and scores["rouge-1"] == [rouge[2], rouge[4]]
    assert {"rouge-2", "rouge-l", "bleu-4"} <= set(scores)
    # the events log holds every event once, in order
    rows = page.locator("#events tbody tr")
    expect(rows).to_have_count(len(events["data"]))
    ids = rows.evaluate_all("els => els.map(e => Number(e.dataset.id))")
    assert ids == [e["id"] for e in events["data"]]
    page.screenshot(path=screenshots / "job.png")
    # the trainer log is the service's tail of it
    page.click("button[data-tab=log]")
    expect(page.locator("#trainer-log")).not_to_be_empty()
    assert page.locator("#trainer-log").text_content() == log
    # the dataset tab draws the token length histogram of the report
    page.click("button[data-tab=dataset]")
    section = page.locator('[data-role="training"]')
    expect(section).to_contain_text(f"{report['conversations']} conversations")
    bars = section.locator(".chart")
    expect(bars.locator("canvas")).to_have_count(1)
    counts = bars.evaluate("el => el.uplot.data[1]")
    assert counts == report["stats"]["histogram"]["counts"]
    assert sum(counts) == report["conversations"] == 16


def test_a_running_job_curve_grows_live_then_cancel_and_resume(
    page: Page, live_service: LiveService, finished_job: FinishedJob
) -> None:
    with api(live_service) as client:
        created = client.post(
            "/jobs",
            json={
                "model": MODEL,
                "method": "lora",
                "training_dataset": finished_job.training_dataset,
                "config": "tiny/lora",
                "overrides": LONG_OVERRIDES,
                "gpus": 0,
            },
        ).json()
        job_id = created["id"]
        try:
            # when its page is open while it trains
            page.goto(f"/ui/#/jobs/{job_id}")
            wait_for(lambda: points(page, "loss") >= 2, 120, "the first logged steps")
            seen = points(page, "loss")
            # then the curve grows without a reload, one point per logged step
            wait_for(lambda: points(page, "loss") >= seen + 3, 60, "the curve to grow")
            steps = chart_data(page, "loss")["step"]
            assert steps == list(range(1, len(steps) + 1))
            expect(page.locator("#job-progress")).to_contain_text(" / 5000")
            expect(page.locator("h1 [data-state]")).to_have_text("running")
            # cancel (confirmed) stops it
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("#cancel")
            expect(page.locator("h1 [data-state]")).to_have_text("cancelled", timeout=60_000)
            expect(page.locator("#cancel")).to_have_count(0)
            # resume queues it again: the page shows the new attempt, cancellable again
            page.click("#resume")
            expect(page.locator("h1 [data-state]")).to_have_text(re.compile("queued|running"))
            expect(page.locator("#cancel")).to_be_visible()
            checkpoints = [
                c["step"] for c in client.get(f"/jobs/{job_id}/checkpoints").json()["data"]
            ]
            assert client.get(f"/jobs/{job_id}").json()["resume_from_step"] == max(checkpoints)
        finally:
            client.post(f"/jobs/{job_id}/cancel")
            wait_for_state(client, job_id, {"cancelled", "failed", "succeeded"}, 60)


def test_promote_a_checkpoint_and_chat_with_its_adapter(
    page: Page, live_service: LiveService, finished_job: FinishedJob
) -> None:
    page.goto(f"/ui/#/jobs/{finished_job.id}")
    page.click("button[data-tab=checkpoints]")
    rows = page.locator("#checkpoints tbody tr")
    expect(rows).to_have_count(2)
    assert rows.evaluate_all("els => els.map(e => Number(e.dataset.step))") == [2, 4]
    expect(rows.first).to_contain_text("rouge-1")
    # when the checkpoint of step 2 is promoted
    page.click("button[data-promote='2']")
    promoted = f"{finished_job.adapter_id}:ckpt-2"
    expect(rows.first.locator(".adapter-id")).to_have_text(promoted)
    # then it is an adapter of the service, and the chat page offers it
    with api(live_service) as client:
        adapters = {a["id"]: a for a in client.get("/adapters").json()["data"]}
    assert adapters[promoted]["step"] == 2 and adapters[promoted]["job_id"] == finished_job.id
    rows.first.get_by_role("link", name="chat", exact=True).click()
    expect(page.locator("select[data-side=a]")).to_have_value(json.dumps(promoted))
    # a reload keeps it shown as promoted
    page.goto(f"/ui/#/jobs/{finished_job.id}")
    page.click("button[data-tab=checkpoints]")
    expect(page.locator("#checkpoints tbody tr").first.locator(".adapter-id")).to_have_text(
        promoted
    )


def test_a_dataset_report_lists_errors_by_line(page: Page, live_service: LiveService) -> None:
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    lines = [
        json.dumps({"messages": good}),
        json.dumps({"messages": [{"role": "bot", "content": "hi"}]}),
        "{not json",
    ]
    with api(live_service) as client:
        dataset = client.post(
            "/datasets", files={"file": ("broken.jsonl", "\n".join(lines).encode())}
        ).json()
    errors = dataset["report"]["errors"]
    page.goto("/ui/#/datasets")
    page.locator(f'#datasets tr[data-dataset="{dataset["id"]}"] a').click()
    table = page.locator("#errors-dataset tbody tr")
    expect(table).to_have_count(len(errors))
    shown = table.evaluate_all("rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    assert shown == [[str(e["line"]), e["path"], e["code"], e["message"]] for e in errors]
    assert {row[0] for row in shown} == {"2", "3"}
    expect(page.locator('[data-role="dataset"]')).to_contain_text("invalid")


def test_the_service_root_leads_to_the_dashboard(live_service: LiveService) -> None:
    response = httpx.get(f"{live_service.base_url}/", follow_redirects=False, timeout=10)
    assert response.status_code == 307 and response.headers["location"] == "/ui/"
    script = httpx.get(f"{live_service.base_url}/ui/js/main.js", timeout=10)
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    missing = httpx.get(f"{live_service.base_url}/ui/nope.js", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    # the files need no key; the API calls they make do
    assert httpx.get(f"{live_service.base_url}/jobs", timeout=10).status_code == 401
