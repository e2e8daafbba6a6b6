"""Client fixtures over the live service (``tests.live_service``): an SDK client and one job
the SDK trained to the end, followed live."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from glmft_client import Client
from glmft_client.types import DatasetWithReport, Job, JobEvent

from tests.live_service import MODEL, TINY_OVERRIDES, LiveService, demo_jsonl


@dataclass(frozen=True)
class TrainedJob:
    dataset: DatasetWithReport
    created: Job
    followed: list[JobEvent]  # what events(follow=True) streamed while it trained
    finished: Job


@pytest.fixture
def client(live_service: LiveService) -> Iterator[Client]:
    with Client(base_url=live_service.base_url, api_key=live_service.api_key) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def trained_job(live_service: LiveService) -> TrainedJob:
    """A LoRA job created (GPUs left to the service: its worker has none), followed live and
    waited for through the sync SDK."""
    with Client(base_url=live_service.base_url, api_key=live_service.api_key) as sdk:
        dataset = sdk.datasets.upload(demo_jsonl(), filename="train.jsonl")
        job = sdk.jobs.create(
            model=MODEL,
            method="lora",
            training_dataset=dataset.id,
            config="tiny/lora",
            overrides=TINY_OVERRIDES,
            suffix="sdk",
            metadata={"suite": "sdk"},
        )
        followed = list(sdk.jobs.events(job.id, follow=True))
        finished = sdk.jobs.wait(job.id, timeout=300, poll_interval=0.5)
    return TrainedJob(dataset, job, followed, finished)
