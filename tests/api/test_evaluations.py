"""Evaluations through the API under a real uvicorn process on PostgreSQL, with adapters trained
on the tiny GLM-4 (``tests.chat_adapters``): stored answers equal what ``/chat`` answers, metrics
equal ``score_texts`` over them, events come in order, cancel stops the runner, a restarted API
resumes without generating stored answers again, and bad requests get 4xx."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from core.db import make_engine, upgrade
from core.jobs import JobState
from core.models import Adapter, Checkpoint, Dataset, EvaluationOutput, Job
from tests.api.helpers import start_api, stop_api
from tests.chat_adapters import ANSWERS, QUESTIONS, ChatAdapters
from tests.conftest import postgres_database
from tests.helpers import redis_url, wait_for
from trainer.metrics import score_texts

MODEL = "glm-4-tiny"
LORA_A = "ft:glm-4-tiny:a:1"
OTHERS = "ft:glm-4-tiny:theirs:2"  # another tenant's adapter
GREEDY = {"temperature": 0, "repetition_penalty": 1.0}


@dataclass
class Service:
    base: str
    env: dict[str, str]
    store: str
    job_id: str  # a job with a P-Tuning v2 checkpoint at step 100
    process: subprocess.Popen[bytes]

    def restart(self) -> None:
        """Stop the API (SIGTERM) and start a new one on the same store."""
        stop_api(self.process)
        self.process, self.base = start_api(self.env)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.base}{path}", json=body, timeout=120, **kwargs)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", params=params, timeout=60)


def _rows(store: str, chat_adapters: ChatAdapters) -> str:
    """The adapters and the P-Tuning v2 job the tests evaluate; the job's id."""
    with Session(make_engine(store), expire_on_commit=False) as session:
        dataset = Dataset(tenant_id="default", filename="d", path="/d", bytes=1, sha256="0" * 64)
        session.add(dataset)
        session.commit()
        job = Job(
            tenant_id="default",
            state=JobState.SUCCEEDED.value,
            model=MODEL,
            method="ptuning_v2",
            training_dataset_id=dataset.id,
        )
        session.add(job)
        session.commit()
        path = str(chat_adapters["pt"])
        session.add(Checkpoint(job_id=job.id, tenant_id="default", step=100, path=path, bytes=1))
        for name, tenant in ((LORA_A, "default"), (OTHERS, "someone-else")):
            path = str(chat_adapters["lora-a"])
            session.add(
                Adapter(id=name, tenant_id=tenant, base_model=MODEL, method="lora", path=path)
            )
        session.commit()
        return job.id


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, chat_adapters: ChatAdapters
) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("evaluations")
    with postgres_database("glmft_evaluations") as store:
        upgrade(store)
        job_id = _rows(store, chat_adapters)
        env = {
            "GLMFT_HOME": str(home),
            "GLMFT_DATABASE_URL": store,
            "GLMFT_BROKER_URL": redis_url(12),
            "GLMFT_MODELS": json.dumps({MODEL: {"path": str(tiny_model_dir)}}),
            "GLMFT_CHAT__MAX_BATCH": "4",
            "GLMFT_CHAT__MAX_NEW_TOKENS": "256",
            "GLMFT_HEARTBEAT_INTERVAL_S": "0.5",
            "GLMFT_EVALUATIONS__POLL_INTERVAL_S": "0.5",
            "GLMFT_EVALUATIONS__PROGRESS_INTERVAL_S": "0.5",
        }
        process, base = start_api(env)
        running = Service(base, env, store, job_id, process)
        try:
            yield running
        finally:
            stop_api(running.process)


def upload(service: Service, rows: list[list[dict[str, Any]]]) -> str:
    lines = "".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in rows)
    files = {"file": ("eval.jsonl", lines.encode(), "application/jsonl")}
    response = httpx.post(f"{service.base}/datasets", files=files, timeout=60)
    assert response.status_code == 201 and response.json()["valid"], response.text
    return str(response.json()["id"])


def qa(question: str, answer: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def long_dataset(service: Service) -> str:
    """60 conversations: long enough to cancel or restart an evaluation in the middle."""
    return upload(service, [qa(f"第{i}个问题：介绍一下你自己", "我是甲模型。") for i in range(60)])


def wait_state(service: Service, evaluation_id: str, *states: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body: dict[str, Any] = service.get(f"/evaluations/{evaluation_id}").json()
        return body if body["state"] in states else None

    result: dict[str, Any] = wait_for(reached, 240, f"evaluation in {states}", every=0.2)
    return result


def follow_events(service: Service, evaluation_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The SSE stream of the evaluation's events, to its ``end`` frame."""
    frames: list[tuple[str, dict[str, Any]]] = []
    url = f"{service.base}/evaluations/{evaluation_id}/events"
    with httpx.stream("GET", url, headers={"Accept": "text/event-stream"}, timeout=240) as r:
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                frames.append((kind, json.loads(line[6:])))
    return frames


def stored_outputs(service: Service, evaluation_id: str) -> dict[tuple[str, int], tuple[int, str]]:
    """``{(model, index): (row id, text)}`` as the store holds them."""
    with Session(make_engine(service.store)) as session:
        rows = session.exec(
            select(EvaluationOutput).where(EvaluationOutput.evaluation_id == evaluation_id)
        ).all()
    return {(r.model, r.index): (r.id or 0, r.text) for r in rows}


def test_answers_equal_chat_and_metrics_equal_score_texts(service: Service) -> None:
    conversations = [qa(q, ANSWERS["lora-a"]) for q in QUESTIONS]
    conversations.append([*qa("你好", "你好！"), {"role": "user", "content": "再见"}])  # skipped
    system = [{"role": "system", "content": "你是助手"}, *qa(QUESTIONS[0], ANSWERS["lora-a"])]
    dataset = upload(service, [*conversations, system])
    checkpoint = {"job": service.job_id, "checkpoint": 100}
    body = {"models": [MODEL, LORA_A, checkpoint], "dataset": dataset, "max_new_tokens": 24}
    created = service.post("/evaluations", {**body, **GREEDY, "name": "side by side"})
    assert created.status_code == 201, created.text
    evaluation = created.json()
    names = [MODEL, LORA_A, f"ft:glm-4-tiny:ptuning_v2:{service.job_id}:ckpt-100"]
    assert evaluation["models"] == names and evaluation["name"] == "side by side"
    assert (evaluation["samples"], evaluation["skipped"]) == (4, 1)
    assert evaluation["progress"] == {"done": 0, "total": 12}

    frames = follow_events(service, evaluation["id"])
    finished = service.get(f"/evaluations/{evaluation['id']}").json()
    assert finished["state"] == "succeeded" and finished["progress"] == {"done": 12, "total": 12}
    kinds = [kind for kind, _ in frames]
    assert kinds[:2] == ["created", "started"] and kinds[-2:] == ["succeeded", "end"]
    assert set(kinds[2:-2]) == {"progress", "model_finished"}
    finished_models = [d["data"]["model"] for k, d in frames if k == "model_finished"]
    assert sorted(finished_models) == sorted(names)
    ids = [data["id"] for kind, data in frames if kind != "end"]
    assert ids == sorted(ids)
    progress = [data["data"]["done"] for kind, data in frames if kind == "progress"]
    assert progress == sorted(progress) and progress[-1] == 12

    samples = service.get(f"/evaluations/{evaluation['id']}/samples").json()["data"]
    assert [(s["index"], s["line"]) for s in samples] == [(0, 1), (1, 2), (2, 3), (4, 5)]
    for name, model in zip(names, body["models"], strict=True):
        texts = []
        for sample in samples:
            output = sample["outputs"][name]
            chat = service.post(
                "/chat",
                {"model": model, "messages": sample["messages"], "max_new_tokens": 24, **GREEDY},
            )
            assert output["text"] == chat.json()["message"]["content"], (name, sample["index"])
            assert output["scores"] == score_texts([output["text"]], [sample["reference"]])
            texts.append(output["text"])
        references = [s["reference"] for s in samples]
        assert finished["metrics"][name] == score_texts(texts, references)
    assert [s["outputs"][LORA_A]["text"] for s in samples[:3]] == [ANSWERS["lora-a"]] * 3
    assert finished["metrics"][LORA_A]["rouge-l"] > finished["metrics"][MODEL]["rouge-l"]
    assert list(finished["metrics"]) == names  # side by side, in the order given

    one_model = service.get(f"/evaluations/{evaluation['id']}/samples", model=LORA_A).json()
    assert all(list(s["outputs"]) == [LORA_A] for s in one_model["data"])
    first = service.get(f"/evaluations/{evaluation['id']}/samples", limit=3).json()
    assert first["has_more"] and first["next_cursor"] == "2"
    rest = service.get(f"/evaluations/{evaluation['id']}/samples", after=2).json()
    assert [s["index"] for s in rest["data"]] == [4] and not rest["has_more"]
    listed = service.get("/evaluations", state="succeeded").json()["data"]
    assert evaluation["id"] in [e["id"] for e in listed]


def test_cancel_stops_the_runner_and_it_takes_the_next_one(
    service: Service, long_dataset: str
) -> None:
    body = {"models": [MODEL], "dataset": long_dataset, "max_new_tokens": 256}
    evaluation = service.post("/evaluations", body).json()

    def started() -> bool:
        progress = service.get(f"/evaluations/{evaluation['id']}").json()["progress"]
        return bool(progress["done"] > 0)

    wait_for(started, 120, "the first stored answers", every=0.1)
    cancelled = service.post(f"/evaluations/{evaluation['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    done = cancelled.json()["progress"]["done"]
    assert 0 < done < 60
    frames = follow_events(service, evaluation["id"])
    assert frames[-2][0] == "cancelled" and frames[-1] == (
        "end",
        {"evaluation_id": evaluation["id"], "state": "cancelled"},
    )
    small = service.post("/evaluations", {**body, "max_new_tokens": 4, "limit": 2}).json()
    assert wait_state(service, small["id"], "succeeded", "failed")["state"] == "succeeded"
    # nothing was written after the cancel: the runner's writes are fenced
    assert len(stored_outputs(service, evaluation["id"])) == done
    again = service.post(f"/evaluations/{evaluation['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invalid_evaluation_transition"


def test_a_restarted_api_resumes_without_generating_stored_answers(
    service: Service, long_dataset: str
) -> None:
    body = {"models": [MODEL, LORA_A], "dataset": long_dataset, "max_new_tokens": 64}
    evaluation = service.post("/evaluations", {**body, **GREEDY}).json()

    def some_stored() -> bool:
        progress = service.get(f"/evaluations/{evaluation['id']}").json()["progress"]
        return bool(progress["done"] >= 8)

    wait_for(some_stored, 120, "some stored answers", every=0.1)
    stop_api(service.process)  # SIGTERM: the runner hands the evaluation back
    before = stored_outputs(service, evaluation["id"])
    service.process, service.base = start_api(service.env)
    finished = wait_state(service, evaluation["id"], "succeeded", "failed")
    assert finished["state"] == "succeeded", finished["error"]
    after = stored_outputs(service, evaluation["id"])
    assert 8 <= len(before) < 120 and len(after) == 120
    assert {key: after[key] for key in before} == before  # the same rows, untouched
    events = service.get(f"/evaluations/{evaluation['id']}/events", limit=1000).json()["data"]
    kinds = [e["kind"] for e in events]
    assert kinds.index("started") < kinds.index("interrupted") < kinds.index("resumed")
    resumed = events[kinds.index("resumed")]["data"]
    assert resumed["done"] == len(before) and resumed["total"] == 120
    assert kinds[-1] == "succeeded" and kinds.count("model_finished") == 2


def _error(response: httpx.Response, status: int, code: str, param: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error.get("param")) == (code, param), error


def test_bad_requests_are_refused_at_admission(service: Service, tmp_path: Path) -> None:
    dataset = upload(service, [qa(QUESTIONS[0], ANSWERS["lora-a"])])
    ok = {"models": [MODEL], "dataset": dataset}
    cases: list[tuple[dict[str, Any], int, str, str | None]] = [
        ({"models": [MODEL, "ft:nope"]}, 404, "model_not_found", "models.1"),
        ({"models": [OTHERS]}, 404, "model_not_found", "models.0"),
        ({"models": [{"job": "job-nope", "checkpoint": 1}]}, 404, "job_not_found", "models.0.job"),
        (
            {"models": [{"job": service.job_id, "checkpoint": 7}]},
            404,
            "checkpoint_not_found",
            "models.0.checkpoint",
        ),
        ({"models": [MODEL, MODEL]}, 422, "invalid_request", "models.1"),
        ({"models": []}, 422, "invalid_request", "models"),
        ({"models": [MODEL] * 9}, 422, "invalid_request", "models"),
        ({"dataset": "ds-nope"}, 422, "invalid_dataset", "dataset"),
        ({"max_new_tokens": 257}, 422, "invalid_request", "max_new_tokens"),
        ({"limit": 0}, 422, "invalid_request", "limit"),
        ({"temprature": 0}, 422, "invalid_request", "temprature"),
    ]
    for change, status, code, param in cases:
        _error(service.post("/evaluations", {**ok, **change}), status, code, param)
    invalid = httpx.post(
        f"{service.base}/datasets",
        files={"file": ("bad.jsonl", b'{"messages": [{"role": "bot", "content": "x"}]}\n')},
    ).json()["id"]
    _error(
        service.post("/evaluations", {**ok, "dataset": invalid}), 422, "invalid_dataset", "dataset"
    )
    no_reply = upload(service, [[*qa("你好", "你好！"), {"role": "user", "content": "再见"}]])
    _error(
        service.post("/evaluations", {**ok, "dataset": no_reply}), 422, "invalid_dataset", "dataset"
    )
    _error(service.get("/evaluations/eval-nope"), 404, "evaluation_not_found", "evaluation_id")

    key = {"Idempotency-Key": "eval-ci-1"}
    first = service.post("/evaluations", {**ok, "max_new_tokens": 2}, headers=key)
    replay = service.post("/evaluations", {**ok, "max_new_tokens": 2}, headers=key)
    assert (first.status_code, replay.status_code) == (201, 200)
    assert replay.json()["id"] == first.json()["id"]
    other = service.post("/evaluations", {**ok, "max_new_tokens": 3}, headers=key)
    _error(other, 409, "idempotency_key_reused", "Idempotency-Key")
    samples = service.get(f"/evaluations/{first.json()['id']}/samples", model=LORA_A)
    _error(samples, 422, "invalid_request", "model")
