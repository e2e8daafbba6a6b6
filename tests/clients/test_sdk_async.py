"""The async SDK against the live service: reading a trained job, creating, waiting with a
timeout, cancelling, resuming."""

from __future__ import annotations

import asyncio

import pytest
from glmft_client import AsyncClient, NotFoundError, WaitTimeoutError

from tests.clients.conftest import TrainedJob
from tests.live_service import LONG_OVERRIDES, MODEL, LiveService, demo_jsonl


def test_async_client_reads_what_the_sync_client_trained(
    live_service: LiveService, trained_job: TrainedJob
) -> None:
    async def scenario() -> None:
        async with AsyncClient(base_url=live_service.base_url, api_key=live_service.api_key) as c:
            job = await c.jobs.retrieve(trained_job.finished.id)
            followed = [e.id async for e in c.jobs.events(job.id, follow=True)]
            paged = [e.id async for e in c.jobs.events(job.id)]
            checkpoints = await c.jobs.checkpoints(job.id)
            losses = await c.jobs.metrics(job.id, name="loss")
            models = await c.models.list()
            with pytest.raises(NotFoundError):
                await c.datasets.retrieve("ds-missing")
        assert job.adapter_id == trained_job.finished.adapter_id
        assert followed == paged == [e.id for e in trained_job.followed]
        assert [c.step for c in checkpoints] == [2, 4] and len(losses) == 4
        assert job.adapter_id in {m.id for m in models}

    asyncio.run(scenario())


def test_async_wait_times_out_then_cancel_and_resume_change_the_state(
    live_service: LiveService,
) -> None:
    async def scenario() -> None:
        async with AsyncClient(base_url=live_service.base_url, api_key=live_service.api_key) as c:
            dataset = await c.datasets.upload(demo_jsonl(4), filename="train.jsonl")
            job = await c.jobs.create(
                model=MODEL,
                method="lora",
                training_dataset=dataset.id,
                config="tiny/lora",
                overrides=LONG_OVERRIDES,
                gpus=0,
            )
            with pytest.raises(WaitTimeoutError) as timeout:
                await c.jobs.wait(job.id, timeout=0.5, poll_interval=0.1)
            assert timeout.value.job_id == job.id and not timeout.value.job.done
            await c.jobs.cancel(job.id)
            cancelled = await c.jobs.wait(job.id, timeout=120, poll_interval=0.3)
            assert cancelled.state == "cancelled"
            resumed = await c.jobs.resume(job.id)
            assert resumed.state == "queued"
            await c.jobs.cancel(job.id)
            assert (await c.jobs.wait(job.id, timeout=120, poll_interval=0.3)).state == "cancelled"

    asyncio.run(scenario())
