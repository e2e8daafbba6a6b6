"""The dashboard's chat page in Chromium against the live service: one message to two models,
both answers streamed at once, each model continuing its own conversation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, Request, expect

from tests.live_service import MODEL, LiveService
from tests.ui.conftest import FinishedJob, api

PROMPT = "类型#裙*颜色#红色"
MAX_NEW_TOKENS = 12


def test_two_models_answer_side_by_side_streamed(
    page: Page, live_service: LiveService, finished_job: FinishedJob, screenshots: Path
) -> None:
    # the answers each model gives greedily, asked without the page
    with api(live_service) as client:
        expected = {
            model: client.post(
                "/chat",
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": PROMPT}],
                    "temperature": 0,
                    "max_new_tokens": MAX_NEW_TOKENS,
                },
            ).json()["message"]["content"]
            for model in (MODEL, finished_job.adapter_id)
        }
    timeline: list[tuple[str, str]] = []  # (sent | finished, side), in order
    bodies: list[dict[str, Any]] = []

    def sent(request: Request) -> None:
        if request.url.endswith("/chat") and request.method == "POST":
            body = json.loads(request.post_data or "{}")
            bodies.append(body)
            timeline.append(("sent", body["model"]))

    def finished(request: Request) -> None:
        if request.url.endswith("/chat") and request.method == "POST":
            timeline.append(("finished", json.loads(request.post_data or "{}")["model"]))

    page.on("request", sent)
    page.on("requestfinished", finished)
    # given the base model on the left and the fine-tuned adapter on the right
    query = f"a={json.dumps(MODEL)}&b={json.dumps(finished_job.adapter_id)}"
    page.goto(f"/ui/#/chat?{query}")
    expect(page.locator("select[data-side=a]")).to_have_value(json.dumps(MODEL))
    expect(page.locator("select[data-side=b]")).to_have_value(json.dumps(finished_job.adapter_id))
    page.fill("#temperature", "0")
    page.fill("#max-new-tokens", str(MAX_NEW_TOKENS))
    # when one message is sent
    page.fill("#prompt", PROMPT)
    page.click("#send")
    answers = page.locator(".msg.assistant[data-state=done]")
    expect(answers).to_have_count(2, timeout=60_000)
    # then both requests were streaming at once, and each side shows its model's answer
    assert [kind for kind, _ in timeline[:2]] == ["sent", "sent"], timeline
    assert all(body["stream"] is True for body in bodies)
    deltas: dict[str, int] = {}
    for side, model in (("a", MODEL), ("b", finished_job.adapter_id)):
        bubble = page.locator(f".transcript[data-side={side}] .msg.assistant")
        expect(bubble.locator(".msg-text")).to_have_text(expected[model])
        deltas[side] = int(bubble.get_attribute("data-deltas") or 0)
        expect(bubble.locator(".msg-footer")).to_contain_text("tokens")
    # both came as delta frames; the base model's 12 tokens in pieces, not one block
    assert deltas["a"] >= 2 and deltas["b"] >= 1, deltas
    assert expected[MODEL] != expected[finished_job.adapter_id]
    page.screenshot(path=screenshots / "chat.png")
    # a second message goes to both, each with its own model's first answer
    page.fill("#prompt", "再来一个")
    page.click("#send")
    expect(page.locator(".msg.assistant[data-state=done]")).to_have_count(4, timeout=60_000)
    second = {json.dumps(b["model"]): b["messages"] for b in bodies[2:]}
    for model in (MODEL, finished_job.adapter_id):
        assert second[json.dumps(model)] == [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": expected[model]},
            {"role": "user", "content": "再来一个"},
        ]
