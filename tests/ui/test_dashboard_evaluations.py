"""The dashboard's evaluations pages in Chromium.

``test_an_evaluation_runs_from_the_page`` starts one from the form on the live service and reads
it back against the API. ``test_the_pages_render_crafted_results`` answers the evaluation routes
in the browser with results whose diff and best values are known (each checked against the
API's schemas, every other route is the live service), and checks the word diff itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Page, Route, expect

from api.schemas.evaluations import EvaluationPublic, EvaluationSamplePublic
from tests.live_service import MODEL, LiveService
from tests.ui.conftest import FinishedJob, api

METRICS = ["rouge-1", "rouge-2", "rouge-l", "bleu-4"]
TUNED = "ft:glm-4-tiny:ui:job-0123456789abcdef01234567"
REFERENCE = "这款红色连衣裙很显气质"
SHAPED_EVALUATION: dict[str, Any] = {
    "id": "eval-0123456789abcdef01234567",
    "object": "evaluation",
    "name": "shapes",
    "state": "succeeded",
    "models": [MODEL, TUNED],
    "dataset": "ds-0123456789abcdef01234567",
    "max_new_tokens": 8,
    "limit": 2,
    "temperature": 0,
    "top_p": 0.8,
    "repetition_penalty": 1.2,
    "samples": 2,
    "skipped": 1,
    "progress": {"done": 4, "total": 4},
    "metrics": {
        MODEL: {"rouge-1": 9.5, "rouge-2": 0.0, "rouge-l": 7.25, "bleu-4": 0.015},
        TUNED: {"rouge-1": 81.0, "rouge-2": 62.5, "rouge-l": 80.0, "bleu-4": 0.4025},
    },
    "created_at": "2026-12-06T10:00:00Z",
    "started_at": "2026-12-06T10:00:01Z",
    "finished_at": "2026-12-06T10:00:09Z",
    "error": None,
}
SHAPED_SAMPLES: list[dict[str, Any]] = [
    {
        "index": index,
        "messages": [{"role": "user", "content": "类型#裙*颜色#红色"}],
        "reference": REFERENCE,
        "outputs": {
            MODEL: {
                "text": "一双 white 鞋",
                "finish_reason": "length",
                "completion_tokens": 8,
                "scores": {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0},
            },
            TUNED: {
                "text": "这款红色连衣裙显气质",
                "finish_reason": "stop",
                "completion_tokens": 6,
                "scores": {"rouge-1": 95.0, "rouge-2": 90.0, "rouge-l": 95.0, "bleu-4": 0.8},
            },
        },
    }
    for index in range(2)
]


def shaped_routes(
    page: Page, created: list[dict[str, Any]], evaluation: dict[str, Any] = SHAPED_EVALUATION
) -> None:
    """Answer the evaluation routes with the crafted results; record POST /evaluations bodies
    and cancels (``evaluation`` is changed in place by a cancel)."""
    evaluation_id = evaluation["id"]

    def handle(route: Route) -> None:
        request = route.request
        path = urlsplit(request.url).path
        if path == "/evaluations" and request.method == "POST":
            created.append(json.loads(request.post_data or "{}"))
            route.fulfill(status=201, json={**evaluation, "state": "queued"})
        elif path == "/evaluations":
            route.fulfill(json={"data": [evaluation], "has_more": False, "next_cursor": None})
        elif path == f"/evaluations/{evaluation_id}/cancel" and request.method == "POST":
            created.append({"cancel": evaluation_id})
            evaluation["state"] = "cancelled"
            route.fulfill(json=evaluation)
        elif path == f"/evaluations/{evaluation_id}":
            route.fulfill(json=evaluation)
        elif path == f"/evaluations/{evaluation_id}/samples":
            route.fulfill(json={"data": SHAPED_SAMPLES, "has_more": False, "next_cursor": None})
        elif path == f"/evaluations/{evaluation_id}/events":
            end = 'event: end\ndata: {"state": "succeeded"}\n\n'
            route.fulfill(body=end, headers={"Content-Type": "text/event-stream"})
        else:
            route.fulfill(status=404, json={"error": {"code": "not_found", "message": path}})

    page.route(re.compile(r"^https?://[^/]+/evaluations(/|\?|$)"), handle)


def visible_output(page: Page, selector: str) -> list[str]:
    """The outputs' text as shown: everything but the struck reference words."""
    texts: list[str] = page.locator(selector).evaluate_all(
        """els => els.map(el => [...el.childNodes]
            .filter(n => n.nodeName !== 'DEL').map(n => n.textContent).join(''))"""
    )
    return texts


def test_the_crafted_results_have_the_api_shapes() -> None:
    EvaluationPublic.model_validate(SHAPED_EVALUATION)
    for sample in SHAPED_SAMPLES:
        EvaluationSamplePublic.model_validate(sample)


def test_the_pages_render_crafted_results(page: Page, finished_job: FinishedJob) -> None:
    created: list[dict[str, Any]] = []
    shaped_routes(page, created)
    page.goto("/ui/#/evaluations")
    row = page.locator(f'#evaluations tr[data-evaluation="{SHAPED_EVALUATION["id"]}"]')
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text("4 / 4")
    # the form sends the API's request: model names or {job, checkpoint}, dataset, limits
    page.click("#new-evaluation summary")
    for box in page.locator("input[name=model]").all():
        box.uncheck()
    page.check(f"input[name=model][value='{json.dumps(MODEL)}']")
    first_checkpoint = page.locator("input[name=model][value^='{\"job\"']").first
    checkpoint = json.loads(first_checkpoint.get_attribute("value") or "")
    assert set(checkpoint) == {"job", "checkpoint"}
    first_checkpoint.check()
    page.select_option("#eval-dataset", finished_job.validation_dataset)
    page.fill("#eval-limit", "4")
    page.fill("#eval-max-new-tokens", "8")
    page.fill("#eval-name", "shapes")
    page.click("#eval-start")
    expect(page).to_have_url(re.compile(f"/ui/#/evaluations/{SHAPED_EVALUATION['id']}$"))
    assert created == [
        {
            "models": [MODEL, checkpoint],
            "dataset": finished_job.validation_dataset,
            "limit": 4,
            "max_new_tokens": 8,
            "temperature": 0,
            "name": "shapes",
        }
    ]
    # the metrics: one row per model, the best value of each metric marked
    for model in (MODEL, TUNED):
        cells = page.locator(f'#eval-metrics tr[data-model="{model}"] td[data-metric]')
        expect(cells).to_have_count(4)
        values = cells.evaluate_all("els => els.map(e => Number(e.dataset.value))")
        assert values == [SHAPED_EVALUATION["metrics"][model][m] for m in METRICS]
    best = page.locator("#eval-metrics td.best")
    expect(best).to_have_count(4)
    assert set(best.evaluate_all("els => els.map(e => e.parentElement.dataset.model)")) == {TUNED}
    # each sample: the prompt, the reference, and every output diffed against it
    samples = page.locator("#samples .sample")
    expect(samples).to_have_count(2)
    first = samples.first
    expect(first.locator(".reference")).to_contain_text(REFERENCE)
    expect(first.locator(".prompt")).to_contain_text("类型#裙*颜色#红色")
    tuned = first.locator(f'.output[data-model="{TUNED}"]')
    assert tuned.locator("del").all_text_contents() == ["很"]  # the one reference word it missed
    assert tuned.locator("ins").count() == 0
    base = first.locator(f'.output[data-model="{MODEL}"]')
    assert "".join(base.locator("ins").all_text_contents()).replace(" ", "") == "一双white鞋"
    assert (
        visible_output(page, f'#samples .output[data-model="{TUNED}"] .output-text')
        == ["这款红色连衣裙显气质"] * 2
    )
    expect(page.locator("#eval-meta")).to_contain_text("2 samples (1 skipped")
    expect(base.locator(".output-head")).to_contain_text("8 tokens · cut at max_new_tokens")
    expect(tuned.locator(".output-head")).to_contain_text(
        "rouge-1 95 · rouge-2 90 · rouge-l 95 · bleu-4 0.8 · 6 tokens"
    )
    expect(page.locator("#cancel")).to_have_count(0)  # a finished evaluation
    # the missed words can be hidden
    expect(tuned.locator("del")).to_be_visible()
    page.locator("label:has-text('show reference words') input").uncheck()
    expect(tuned.locator("del")).to_be_hidden()


def test_a_running_evaluation_can_be_cancelled(page: Page) -> None:
    requests: list[dict[str, Any]] = []
    running = {**SHAPED_EVALUATION, "state": "running", "progress": {"done": 1, "total": 4}}
    shaped_routes(page, requests, running)
    page.goto(f"/ui/#/evaluations/{running['id']}")
    expect(page.locator("h1 [data-state]")).to_have_text("running")
    expect(page.locator(".eval-progress")).to_contain_text("1 / 4")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    expect(page.locator("h1 [data-state]")).to_have_text("cancelled")
    expect(page.locator("#cancel")).to_have_count(0)
    assert requests == [{"cancel": running["id"]}]


def test_the_word_diff(page: Page) -> None:
    page.goto("/ui/")
    diff = page.evaluate(
        """async () => {
            const { wordDiff } = await import('/ui/js/diff.js');
            return [
                wordDiff('the cat sat', 'the dog sat'),
                wordDiff('红色连衣裙', '红色的裙'),
                wordDiff('', 'new'),
                wordDiff('same text', 'same text'),
            ];
        }"""
    )
    assert diff[0] == [
        {"op": "same", "text": "the "},
        {"op": "add", "text": "dog"},
        {"op": "del", "text": "cat"},
        {"op": "same", "text": " sat"},
    ]
    assert diff[1] == [
        {"op": "same", "text": "红色"},
        {"op": "add", "text": "的"},
        {"op": "del", "text": "连衣"},
        {"op": "same", "text": "裙"},
    ]
    assert diff[2] == [{"op": "add", "text": "new"}]
    assert diff[3] == [{"op": "same", "text": "same text"}]


def test_an_evaluation_runs_from_the_page(
    page: Page, live_service: LiveService, finished_job: FinishedJob, screenshots: Path
) -> None:
    # given the base model and the fine-tuned adapter, picked in the form
    page.goto("/ui/#/evaluations")
    page.click("#new-evaluation summary")
    for box in page.locator("input[name=model]").all():
        box.uncheck()
    for model in (MODEL, finished_job.adapter_id):
        page.check(f"input[name=model][value='{json.dumps(model)}']")
    page.select_option("#eval-dataset", finished_job.validation_dataset)
    page.fill("#eval-limit", "4")
    page.fill("#eval-max-new-tokens", "8")
    page.fill("#eval-name", "dashboard")
    # when it is started from the page
    page.click("#eval-start")
    expect(page).to_have_url(re.compile("/ui/#/evaluations/eval-[0-9a-z]+$"))
    evaluation_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("h1 [data-state]")).to_have_text("succeeded", timeout=180_000)
    # then the page shows the service's metrics for both models side by side
    with api(live_service) as client:
        evaluation = client.get(f"/evaluations/{evaluation_id}").json()
        samples = client.get(f"/evaluations/{evaluation_id}/samples", params={"limit": 10}).json()
    assert evaluation["models"] == [MODEL, finished_job.adapter_id]
    for model in evaluation["models"]:
        cells = page.locator(f'#eval-metrics tr[data-model="{model}"] td[data-metric]')
        values = cells.evaluate_all("els => els.map(e => Number(e.dataset.value))")
        assert values == [evaluation["metrics"][model][m] for m in METRICS]
    # and every sample with the reference and each model's output
    cards = page.locator("#samples .sample")
    expect(cards).to_have_count(len(samples["data"]))
    assert len(samples["data"]) == 4
    for model in evaluation["models"]:
        shown = visible_output(page, f'#samples .output[data-model="{model}"] .output-text')
        assert shown == [s["outputs"][model]["text"] for s in samples["data"]]
    references = page.locator("#samples .reference").all_text_contents()
    assert [r.removeprefix("reference ") for r in references] == [
        s["reference"] for s in samples["data"]
    ]
    page.screenshot(path=screenshots / "evaluation.png")
