"""Chat through the API under a real uvicorn process: native ``POST /chat`` (plain and SSE),
the adapter routes, and the official ``openai`` package on ``/v1``, with adapters trained on
the tiny GLM-4 and an engine cache of two adapters (so it evicts and reloads)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import openai
import pytest
from sqlmodel import Session

from core.db import make_engine
from core.jobs import JobState
from core.models import Adapter, Checkpoint, Dataset, Job
from tests.api.helpers import start_api, stop_api
from tests.chat_adapters import ANSWERS, QUESTIONS, TOOL_CALL, WEATHER_TOOL, ChatAdapters
from tests.helpers import free_port

GREEDY = {"temperature": 0, "repetition_penalty": 1.0, "max_new_tokens": 24}
LORA_A, LORA_B, TOOL = "ft:glm-4-tiny:a:1", "ft:glm-4-tiny:b:2", "ft:glm-4-tiny:tool:3"
SFT = "ft:glm-4-tiny:sft:4"


class Service(NamedTuple):
    base: str  # the API's URL
    job_id: str  # a job with a P-Tuning v2 checkpoint at step 100
    store: str  # the API's database URL


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, chat_adapters: ChatAdapters
) -> Iterator[Service]:
    """The API (SQLite store, engine cache of 2 adapters), its adapters, and a job whose
    P-Tuning v2 checkpoint is at step 100."""
    home = tmp_path_factory.mktemp("chat")
    moved = home / "lora-b"  # its adapter_config.json names a base model that is gone
    shutil.copytree(chat_adapters["lora-b"], moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(home / "moved-away")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    url = f"sqlite:///{home / 'glmft.db'}"
    env = {
        "GLMFT_HOME": str(home),
        "GLMFT_DATABASE_URL": url,
        "GLMFT_MODELS": json.dumps({"glm-4-tiny": {"path": str(tiny_model_dir)}}),
        "GLMFT_CHAT__MAX_ADAPTERS": "2",
        "GLMFT_CHAT__MAX_PROMPT_TOKENS": "256",
        "GLMFT_CHAT__MAX_NEW_TOKENS": "512",
    }
    process, base = start_api(env)
    try:
        with Session(make_engine(url), expire_on_commit=False) as session:
            dataset = Dataset(
                tenant_id="default", filename="d", path="/d", bytes=1, sha256="0" * 64
            )
            session.add(dataset)
            session.commit()
            job = Job(
                tenant_id="default",
                state=JobState.SUCCEEDED.value,
                model="glm-4-tiny",
                method="ptuning_v2",
                training_dataset_id=dataset.id,
            )
            session.add(job)
            session.commit()
            session.add(
                Checkpoint(
                    job_id=job.id,
                    tenant_id="default",
                    step=100,
                    path=str(chat_adapters["pt"]),
                    bytes=1,
                )
            )
            for name, path in ((LORA_A, chat_adapters["lora-a"]), (LORA_B, moved)):
                session.add(_adapter(name, path))
            session.add(_adapter(TOOL, chat_adapters["tool"]))
            session.add(_adapter(SFT, _sft_checkpoint(tiny_model_dir, home / "sft"), "sft"))
            session.commit()
        yield Service(base, job.id, url)
    finally:
        stop_api(process)


def _adapter(name: str, path: Path, method: str = "lora") -> Adapter:
    return Adapter(
        id=name, tenant_id="default", base_model="glm-4-tiny", method=method, path=str(path)
    )


def _sft_checkpoint(base: Path, path: Path) -> Path:
    """A full-SFT checkpoint's layout: the whole model, no tokenizer (it is the base's)."""
    path.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        if (base / name).is_file():
            shutil.copy(base / name, path / name)
    return path


def chat(base: str, model: Any, question: str = QUESTIONS[0], **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": question}], **GREEDY}
    return httpx.post(f"{base}/chat", json={**body, **fields}, timeout=120)


def test_concurrent_requests_each_get_their_own_models_answer(
    service: Service,
) -> None:
    base, job_id = service.base, service.job_id
    models: list[Any] = [LORA_A, LORA_B, "glm-4-tiny", {"job": job_id, "checkpoint": 100}]
    asked = [(models[i % 4], QUESTIONS[i % 3]) for i in range(20)]
    with ThreadPoolExecutor(20) as pool:  # three adapters in flight, two cache slots
        answers = list(pool.map(lambda a: chat(base, a[0], a[1]), asked))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    texts = [r.json()["message"]["content"] for r in answers]
    by_model: dict[str, set[str]] = {}
    for (model, question), text in zip(asked, texts, strict=True):
        if model in (LORA_A, LORA_B):  # lora-b's adapter_config.json names a moved base
            assert text == ANSWERS["lora-a" if model == LORA_A else "lora-b"]
        elif question == QUESTIONS[0]:
            by_model.setdefault(json.dumps(model), set()).add(text)
    base_texts, prefix_texts = by_model[json.dumps("glm-4-tiny")], by_model[json.dumps(models[3])]
    assert len(base_texts) == len(prefix_texts) == 1 and base_texts != prefix_texts
    answer = answers[0].json()
    assert answer["model"] == LORA_A and answer["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] > 0 and answer["timings"]["total_ms"] > 0
    # the engine's paged cache is reported, all of it free again once every answer is in
    metrics = httpx.get(f"{base}/metrics").text
    total = _gauge(metrics, "glmft_chat_cache_tokens")
    assert total > 0 and _gauge(metrics, "glmft_chat_free_cache_tokens") == total
    assert _gauge(metrics, "glmft_chat_running") == 0


def _gauge(metrics: str, name: str) -> float:
    """The sum of a gauge's samples over its models."""
    lines = [line for line in metrics.splitlines() if line.startswith(name + "{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_a_full_sft_checkpoint_is_served_as_its_own_model(service: Service) -> None:
    same_weights = chat(service.base, SFT)
    assert same_weights.status_code == 200, same_weights.text
    base_answer = chat(service.base, "glm-4-tiny").json()["message"]["content"]
    assert same_weights.json()["message"]["content"] == base_answer
    state = httpx.get(f"{service.base}/adapters/{SFT}").json()
    assert state["loaded"] and state["method"] == "sft"


def test_streaming_gives_the_same_text_as_a_plain_answer(service: Service) -> None:
    base = service.base
    plain = chat(base, LORA_A).json()
    frames = []
    with httpx.stream(
        "POST",
        f"{base}/chat",
        json={"model": LORA_A, "messages": [{"role": "user", "content": QUESTIONS[0]}]}
        | GREEDY
        | {"stream": True},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                frames.append((kind, json.loads(line[6:])))
    deltas = "".join(data["text"] for kind, data in frames if kind == "delta")
    assert len(frames) > 3 and frames[-1][0] == "done"
    assert deltas == frames[-1][1]["message"]["content"] == plain["message"]["content"]


def test_a_tool_call_is_parsed(service: Service) -> None:
    base = service.base
    answer = chat(base, TOOL, f"{QUESTIONS[0]}北京天气怎么样？", tools=[WEATHER_TOOL]).json()
    assert answer["message"]["tool_call"] == TOOL_CALL
    assert answer["finish_reason"] == "tool_call"


def test_bad_requests_get_clear_errors(service: Service) -> None:
    base, job_id = service.base, service.job_id
    unknown = chat(base, "ft:glm-4-tiny:nope:0")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    no_step = chat(base, {"job": job_id, "checkpoint": 7})
    assert no_step.status_code == 404
    assert no_step.json()["error"]["code"] == "checkpoint_not_found"
    ends_with_answer = httpx.post(
        f"{base}/chat",
        json={
            "model": LORA_A,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"},
            ],
        },
    )
    error = ends_with_answer.json()["error"]
    assert ends_with_answer.status_code == 422 and error["code"] == "invalid_messages"
    assert error["details"]["issues"][-1]["code"] == "no_turn_to_answer"
    bad_role = httpx.post(
        f"{base}/chat", json={"model": LORA_A, "messages": [{"role": "bot", "content": "hi"}]}
    )
    assert bad_role.status_code == 422 and bad_role.json()["error"]["param"] == "messages[0].role"
    too_many = chat(base, LORA_A, max_new_tokens=100_000)
    assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "prompt_too_long"
    too_long = chat(base, LORA_A, "长" * 2000)
    assert too_long.status_code == 422 and too_long.json()["error"]["code"] == "prompt_too_long"
    unknown_field = chat(base, LORA_A, temprature=0.1)
    assert unknown_field.status_code == 422
    assert unknown_field.json()["error"]["param"] == "temprature"


def test_adapters_load_pin_unload_promote_and_delete(service: Service) -> None:
    base, job_id = service.base, service.job_id
    listed = {a["id"]: a for a in httpx.get(f"{base}/adapters").json()["data"]}
    assert {LORA_A, LORA_B, TOOL} <= set(listed)
    pinned = httpx.post(f"{base}/adapters/{LORA_A}/load", json={"pin": True}, timeout=60).json()
    assert pinned["loaded"] and pinned["pinned"]
    for model in (LORA_B, TOOL):  # two more adapters through a two-slot cache
        assert chat(base, model).status_code == 200
    assert httpx.get(f"{base}/adapters/{LORA_A}").json()["loaded"]  # pinned: never evicted
    assert not httpx.get(f"{base}/adapters/{LORA_B}").json()["loaded"]  # evicted
    unloaded = httpx.post(f"{base}/adapters/{LORA_A}/unload", timeout=60).json()
    assert not unloaded["loaded"] and not unloaded["pinned"]
    # a checkpoint answers by its id before it is promoted (OpenAI's checkpoint model name)
    by_id = chat(base, f"ft:glm-4-tiny:ptuning_v2:{job_id}:ckpt-100").json()["message"]
    promoted = httpx.post(f"{base}/jobs/{job_id}/checkpoints/100/promote", timeout=60)
    assert promoted.status_code == 201 and promoted.json()["step"] == 100
    adapter_id = promoted.json()["id"]
    by_checkpoint = chat(base, {"job": job_id, "checkpoint": 100}).json()["message"]
    assert chat(base, adapter_id).json()["message"] == by_checkpoint == by_id
    assert adapter_id == f"ft:glm-4-tiny:ptuning_v2:{job_id}:ckpt-100"
    assert httpx.delete(f"{base}/adapters/{adapter_id}", timeout=60).status_code == 204
    assert httpx.get(f"{base}/adapters/{adapter_id}").status_code == 404
    assert httpx.post(f"{base}/jobs/{job_id}/checkpoints/5/promote").status_code == 404


def test_the_openai_package_completes_and_streams_with_an_adapter(
    service: Service,
) -> None:
    base = service.base
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    assert {LORA_A, "glm-4-tiny"} <= {m.id for m in client.models.list()}
    messages: Any = [{"role": "user", "content": QUESTIONS[0]}]
    extra = {"repetition_penalty": 1.0}
    done = client.chat.completions.create(
        model=LORA_A, messages=messages, temperature=0, max_tokens=24, extra_body=extra
    )
    assert done.choices[0].message.content == ANSWERS["lora-a"]
    assert done.choices[0].finish_reason == "stop" and done.usage and done.usage.total_tokens
    stream = client.chat.completions.create(
        model=LORA_A,
        messages=messages,
        temperature=0,
        max_tokens=24,
        stream=True,
        extra_body=extra,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == ANSWERS["lora-a"]
    tools: Any = [WEATHER_TOOL]
    called = client.chat.completions.create(
        model=TOOL,
        messages=[{"role": "user", "content": f"{QUESTIONS[0]}北京天气怎么样？"}],
        tools=tools,
        temperature=0,
        max_tokens=24,
        extra_body=extra,
    )
    call = called.choices[0].message.tool_calls
    assert called.choices[0].finish_reason == "tool_calls" and call
    assert call[0].function.name == TOOL_CALL["name"]  # type: ignore[union-attr]
    assert json.loads(call[0].function.arguments) == TOOL_CALL["arguments"]  # type: ignore[union-attr]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="ft:nope", messages=messages)
    assert missing.value.code == "model_not_found"


def test_a_front_api_routes_chat_to_a_replica(service: Service, tmp_path: Path) -> None:
    replica = service.base
    home = tmp_path / "front"
    store = service.store
    # the front cannot load the model itself: its registry path does not exist
    front, base = start_api(
        {
            "GLMFT_HOME": str(home),
            "GLMFT_DATABASE_URL": store,
            "GLMFT_MODELS": json.dumps({"glm-4-tiny": {"path": str(tmp_path / "no-model")}}),
            "GLMFT_CHAT__REMOTE_URL": replica,
        }
    )
    try:
        answer = chat(base, LORA_A)
        assert answer.status_code == 200, answer.text
        assert answer.json()["message"]["content"] == ANSWERS["lora-a"]
        assert httpx.get(f"{base}/adapters/{LORA_A}").json()["loaded"]  # the replica's state
        assert httpx.get(f"{base}/models").status_code == 200  # the rest stays local
        missing = httpx.get(f"{base}/evaluations/eval-none").json()["error"]
        assert missing["code"] == "evaluation_not_found"
    finally:
        stop_api(front)
    down, base = start_api(
        {
            "GLMFT_HOME": str(home),
            "GLMFT_DATABASE_URL": store,
            "GLMFT_CHAT__REMOTE_URL": f"http://127.0.0.1:{free_port()}",
        }
    )
    try:
        refused = chat(base, LORA_A)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "chat_unavailable"
        assert refused.headers["retry-after"] == "5" and refused.json()["request_id"]
        # evaluations run where chat runs: they are forwarded too
        evaluations = httpx.get(f"{base}/evaluations")
        assert evaluations.status_code == 503
        assert evaluations.json()["error"]["code"] == "chat_unavailable"
    finally:
        stop_api(down)
