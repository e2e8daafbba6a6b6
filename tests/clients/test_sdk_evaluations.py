"""Evaluations through the live service (uvicorn, Celery, PostgreSQL, Redis) with the adapter
the SDK trained: the SDK (sync and async) and ``glmft-client eval``, whose exit code gates CI
on thresholds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from glmft_client import AsyncClient, Client, ConflictError, NotFoundError

from tests.clients.conftest import TrainedJob
from tests.clients.test_client_cli import ci_env, cli, step_outputs
from tests.live_service import MODEL, LiveService, demo_jsonl
from trainer.metrics import score_texts


def test_the_sdk_runs_follows_and_reads_an_evaluation(
    live_service: LiveService, trained_job: TrainedJob
) -> None:
    adapter = trained_job.finished.adapter_id
    assert adapter is not None
    with Client(base_url=live_service.base_url, api_key=live_service.api_key) as client:
        dataset = client.datasets.upload(demo_jsonl(8), filename="eval.jsonl")
        created = client.evaluations.create(
            models=[MODEL, adapter], dataset=dataset.id, limit=4, max_new_tokens=8, name="sdk"
        )
        followed = list(client.evaluations.events(created.id, follow=True))
        finished = client.evaluations.wait(created.id, timeout=120, poll_interval=0.3)
        samples = client.evaluations.samples(created.id)
        first_two = client.evaluations.samples(created.id, limit=2)
        rest = client.evaluations.samples(created.id, after=first_two[-1].index, model=adapter)
        listed = client.evaluations.list(state="succeeded", limit=100).data
        with pytest.raises(ConflictError):
            client.evaluations.cancel(created.id)
        with pytest.raises(NotFoundError) as unknown:
            client.evaluations.create(models=[MODEL, "ft:nope"], dataset=dataset.id)
    assert (created.state, created.samples, created.name) == ("queued", 4, "sdk")
    assert finished.state == "succeeded" and finished.models == [MODEL, adapter]
    assert finished.progress.done == finished.progress.total == 8
    kinds = [e.kind for e in followed]
    assert kinds[:2] == ["created", "started"] and kinds[-1] == "succeeded"
    assert kinds.count("model_finished") == 2
    assert [s.index for s in samples] == [0, 1, 2, 3]
    for model in (MODEL, adapter):
        texts = [s.outputs[model].text for s in samples]
        assert finished.metrics[model] == score_texts(texts, [s.reference for s in samples])
    assert [s.index for s in first_two] == [0, 1]
    assert [(s.index, list(s.outputs)) for s in rest] == [(2, [adapter]), (3, [adapter])]
    assert created.id in [e.id for e in listed]
    assert unknown.value.code == "model_not_found" and unknown.value.param == "models.1"

    async def read_async() -> None:
        async with AsyncClient(base_url=live_service.base_url, api_key=live_service.api_key) as c:
            again = await c.evaluations.retrieve(created.id)
            events = [e.id async for e in c.evaluations.events(created.id)]
            live = [e.id async for e in c.evaluations.events(created.id, follow=True)]
            read = await c.evaluations.samples(created.id)
            waited = await c.evaluations.wait(created.id, timeout=5)
        assert again.metrics == waited.metrics == finished.metrics
        assert events == live == [e.id for e in followed]
        assert read == samples

    asyncio.run(read_async())


def test_eval_gates_ci_on_thresholds(
    live_service: LiveService,
    trained_job: TrainedJob,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = str(trained_job.finished.adapter_id)
    data = tmp_path / "eval.jsonl"
    data.write_bytes(demo_jsonl(6))
    env = ci_env(live_service, tmp_path / "github_output")
    common = [f"--baseline={MODEL}", f"--model={adapter}", "--limit=3", "--max-new-tokens=8"]
    common.append("--poll-interval=0.3")
    # a file is uploaded, both models scored side by side, every threshold met: exit 0
    passed = cli(
        capsys, monkeypatch, env, "eval", *common, f"--dataset={data}", "--threshold=rouge-1=0"
    )
    assert passed.code == 0, passed.err
    table = passed.out.splitlines()
    assert MODEL in table[1] and adapter[:20] in passed.out
    assert [line.split()[1] for line in table if line.startswith("| ")][1:] == [
        "rouge-1",
        "rouge-2",
        "rouge-l",
        "bleu-4",
    ]
    outputs = step_outputs(tmp_path / "github_output")
    assert outputs["passed"] == "true"
    with Client(base_url=live_service.base_url, api_key=live_service.api_key) as client:
        first = client.evaluations.retrieve(outputs["evaluation_id"])
        count = len(client.evaluations.list(limit=100).data)
    assert first.state == "succeeded" and first.samples == 3
    # a model below a threshold: exit 5, the JSON says which
    failed = cli(
        capsys,
        monkeypatch,
        env,
        "eval",
        *common,
        f"--dataset={first.dataset}",
        f"--threshold={adapter}:rouge-1=101",
        "--threshold=bleu-4=0",
        "--json",
    )
    assert failed.code == 5, failed.err
    result = json.loads(failed.out)
    assert result["passed"] is False and result["evaluation"]["metrics"] == first.metrics
    rouge = first.metrics[adapter]["rouge-1"]
    assert [(t["model"], t["metric"], t["value"], t["passed"]) for t in result["thresholds"]] == [
        (adapter, "rouge-1", rouge, False),
        (adapter, "bleu-4", first.metrics[adapter]["bleu-4"], True),
    ]
    assert f"below threshold: {adapter}: rouge-1 {rouge} < 101" in failed.err
    # invalid input exits 2 before anything is created
    for bad, message in (
        (["--threshold=rouge-9=1", f"--dataset={first.dataset}"], "'rouge-9' is none of"),
        (["--threshold=ft:other:rouge-1=1", f"--dataset={first.dataset}"], "ft:other is not one"),
        ([f"--dataset={tmp_path / 'missing.jsonl'}"], "no such file"),
    ):
        refused = cli(capsys, monkeypatch, env, "eval", *common, *bad)
        assert refused.code == 2 and message in refused.err, refused.err
    unknown = cli(capsys, monkeypatch, env, "eval", "--model=ft:nope", f"--dataset={first.dataset}")
    assert unknown.code == 2 and "model_not_found" in unknown.err
    with Client(base_url=live_service.base_url, api_key=live_service.api_key) as client:
        assert len(client.evaluations.list(limit=100).data) == count + 1
