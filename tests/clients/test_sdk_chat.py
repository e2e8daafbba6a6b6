"""The SDK and the CLI's chat, compare and adapters against the live service, with the adapter
of the job the SDK trained (``trained_job``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from glmft_client import Client, NotFoundError
from glmft_client.cli import main
from glmft_client.types import ChatDelta, ChatResponse

from tests.clients.conftest import TrainedJob
from tests.live_service import MODEL, LiveService

PROMPT = [{"role": "user", "content": "类型#裙*颜色#红色"}]


def greedy(client: Client, model: str) -> ChatResponse:
    return client.chat.create(
        model=model, messages=PROMPT, temperature=0.0, max_new_tokens=12, repetition_penalty=1.0
    )


def test_chat_plain_and_streamed_agree_and_adapters_load_and_unload(
    client: Client, trained_job: TrainedJob
) -> None:
    adapter = trained_job.finished.adapter_id
    assert adapter is not None
    plain = greedy(client, adapter)
    assert plain.model == adapter and plain.usage.completion_tokens > 0
    chunks = list(
        client.chat.stream(
            model=adapter,
            messages=PROMPT,
            temperature=0.0,
            max_new_tokens=12,
            repetition_penalty=1.0,
        )
    )
    final = chunks[-1]
    assert isinstance(final, ChatResponse)
    text = "".join(c.text for c in chunks if isinstance(c, ChatDelta))
    assert text == final.message.content == plain.message.content
    assert client.adapters.retrieve(adapter).loaded  # chat loaded it
    pinned = client.adapters.load(adapter, pin=True)
    assert pinned.loaded and pinned.pinned
    assert not client.adapters.unload(adapter).loaded
    assert adapter in {a.id for a in client.adapters.list()}
    with pytest.raises(NotFoundError) as missing:
        client.chat.create(model="ft:glm-4-tiny:none:job-0", messages=PROMPT)
    assert missing.value.code == "model_not_found"


def test_cli_chat_and_compare_answer_from_the_service(
    live_service: LiveService,
    trained_job: TrainedJob,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GLMFT_BASE_URL", live_service.base_url)
    monkeypatch.setenv("GLMFT_API_KEY", live_service.api_key)
    adapter = trained_job.finished.adapter_id
    assert adapter is not None
    sampling = ["--temperature=0", "--max-new-tokens=12", "--repetition-penalty=1"]
    capsys.readouterr()
    assert main(["chat", f"--model={adapter}", "--prompt", PROMPT[0]["content"], *sampling]) == 0
    streamed = capsys.readouterr().out.strip()
    with Client(base_url=live_service.base_url, api_key=live_service.api_key) as sdk:
        expected = greedy(sdk, adapter)
    assert streamed == expected.message.content.strip()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT[0]["content"]}) + "\n", encoding="utf-8")
    models = [f"--model={MODEL}", f"--model={adapter}"]
    code = main(["compare", *models, f"--prompts={prompts}", "--json", *sampling])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and row["prompt"] == PROMPT[0]["content"]
    assert row["answers"][adapter] == expected.message.content
    assert set(row["answers"]) == {MODEL, adapter}
