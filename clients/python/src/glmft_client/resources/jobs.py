"""``client.jobs``: check, create (idempotent across retries), retrieve, list, cancel, pause,
resume, events (past ones, then live), metrics, checkpoints and ``wait``."""

from __future__ import annotations

import asyncio
import builtins
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from glmft_client._event_stream import EventRoute, aevents, events
from glmft_client._http import AsyncHTTP, RequestSpec, SyncHTTP
from glmft_client.errors import WaitTimeoutError
from glmft_client.types import (
    Checkpoint,
    Job,
    JobCheck,
    JobCheckRequest,
    JobCreateRequest,
    JobEvent,
    ListOf,
    Method,
    Metric,
    Page,
    ResumeRequest,
)

METRICS_PAGE = 10_000
#: Called with the job each time ``wait`` polls it.
JobCallback = Callable[[Job], None]


def new_idempotency_key() -> str:
    """A fresh key: one per logical create, reused by every retry of it."""
    return f"glmft-client-{uuid.uuid4().hex}"


def _create_spec(body: JobCreateRequest, idempotency_key: str | None) -> RequestSpec:
    return RequestSpec(
        "POST",
        "/jobs",
        json=body.model_dump(mode="json", exclude_none=True),
        headers={"Idempotency-Key": idempotency_key or new_idempotency_key()},
    )


def _check_spec(
    model: str,
    method: Method,
    config: str | None,
    overrides: Mapping[str, Any] | None,
    gpus: int | None,
    seed: int | None,
) -> RequestSpec:
    body = JobCheckRequest(
        model=model,
        method=method,
        config=config,
        overrides=dict(overrides or {}),
        gpus=gpus,
        seed=seed,
    )
    return RequestSpec("POST", "/jobs/check", json=body.model_dump(mode="json", exclude_none=True))


def _list_spec(
    state: str | builtins.list[str] | None,
    model: str | None,
    metadata: Mapping[str, str] | None,
    limit: int,
    after: str | None,
) -> RequestSpec:
    params: dict[str, Any] = {"state": state, "model": model, "limit": limit, "after": after}
    params.update({f"metadata.{k}": v for k, v in (metadata or {}).items()})
    return RequestSpec("GET", "/jobs", params=params)


def _resume_spec(job_id: str, checkpoint_step: int | None) -> RequestSpec:
    body = ResumeRequest(checkpoint_step=checkpoint_step).model_dump(exclude_none=True)
    return RequestSpec("POST", f"/jobs/{job_id}/resume", json=body)


def _events(job_id: str) -> EventRoute[JobEvent]:
    return EventRoute(f"job {job_id}", f"/jobs/{job_id}/events", JobEvent)


def _metrics_spec(job_id: str, split: str | None, name: str | None, after: int) -> RequestSpec:
    params = {"split": split, "name": name, "after": after, "limit": METRICS_PAGE}
    return RequestSpec("GET", f"/jobs/{job_id}/metrics", params=params)


class Jobs:
    """Fine-tuning jobs."""

    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def create(
        self,
        *,
        model: str,
        method: Method,
        training_dataset: str,
        validation_dataset: str | None = None,
        config: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        gpus: int | None = None,
        seed: int | None = None,
        suffix: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
    ) -> Job:
        """Create a job; with the same ``idempotency_key`` the server returns the same job.

        Args:
            model: a base model of the registry (see ``client.models.list()``).
            method: ``lora``, ``ptuning_v2`` or ``sft``.
            training_dataset: id of a valid dataset.
            validation_dataset: id of a valid dataset for evaluation.
            config: a preset name (``lora``, ``tiny/lora``) or an upstream-style YAML document.
            overrides: dotted config keys, e.g. ``{"training_args.max_steps": 500}``.
            gpus: GPUs for the job; 0 trains on CPU. Default: the base model's in the server's
                registry, else 1 when a worker has GPUs and 0 when none has.
            seed: sets ``training_args.seed``.
            suffix: part of the adapter id ``ft:<base>:<suffix>:<job>``.
            metadata: string pairs, filterable in :meth:`list`.
            idempotency_key: default: a fresh key, reused by this call's retries.
            priority: order inside your tenant's queue, -100..100 (higher starts first).

        Raises:
            InvalidRequestError: the config, a dataset or the model is refused (``param``).
            ConflictError: the key was used for a different request.
            QuotaExceededError: the tenant's queued-jobs or GPU quota (``details``).
        """
        body = JobCreateRequest(
            model=model,
            method=method,
            training_dataset=training_dataset,
            validation_dataset=validation_dataset,
            config=config,
            overrides=dict(overrides or {}),
            gpus=gpus,
            priority=priority,
            seed=seed,
            suffix=suffix,
            metadata=dict(metadata or {}),
        )
        response = self._http.request(_create_spec(body, idempotency_key))
        return Job.model_validate(response.json())

    def check(
        self,
        *,
        model: str,
        method: Method,
        config: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        gpus: int | None = None,
        seed: int | None = None,
    ) -> JobCheck:
        """What :meth:`create` would make of a job, before any dataset is uploaded: the
        server checks the model, the config against it and the GPUs against its workers.

        Raises:
            NotFoundError: the model is not in the registry.
            InvalidRequestError: the config or the GPUs are refused (``param``).
        """
        spec = _check_spec(model, method, config, overrides, gpus, seed)
        return JobCheck.model_validate(self._http.request(spec).json())

    def retrieve(self, job_id: str) -> Job:
        """A job with its progress, latest metrics and error."""
        return Job.model_validate(self._http.request(RequestSpec("GET", f"/jobs/{job_id}")).json())

    def list(
        self,
        *,
        state: str | builtins.list[str] | None = None,
        model: str | None = None,
        metadata: Mapping[str, str] | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> Page[Job]:
        """Your jobs, newest first, filtered by state(s), base model and metadata pairs."""
        response = self._http.request(_list_spec(state, model, metadata, limit, after))
        return Page[Job].model_validate(response.json())

    def cancel(self, job_id: str) -> Job:
        """Cancel: a queued job at once, a running one once its worker stopped it."""
        response = self._http.request(RequestSpec("POST", f"/jobs/{job_id}/cancel"))
        return Job.model_validate(response.json())

    def pause(self, job_id: str) -> Job:
        """Pause: a queued job is held back; a running one's trainer stops, keeping its
        checkpoints. :meth:`resume` continues from the newest one."""
        response = self._http.request(RequestSpec("POST", f"/jobs/{job_id}/pause"))
        return Job.model_validate(response.json())

    def resume(self, job_id: str, *, checkpoint_step: int | None = None) -> Job:
        """Queue a paused, failed or cancelled job again from a checkpoint (default: the
        newest). A paused job whose trainer is still stopping raises ``ConflictError``
        (``job_still_stopping``): try again a few seconds later."""
        response = self._http.request(_resume_spec(job_id, checkpoint_step))
        return Job.model_validate(response.json())

    def events(self, job_id: str, *, follow: bool = False, after: int = 0) -> Iterator[JobEvent]:
        """The job's events in order; with ``follow`` the live stream, until the job is done.

        A stream that drops is reopened after the last event received (up to the client's
        ``max_retries`` times in a row); then ``APIConnectionError`` is raised.
        """
        return events(self._http, _events(job_id), after, follow=follow)

    def metrics(
        self, job_id: str, *, split: str | None = None, name: str | None = None
    ) -> builtins.list[Metric]:
        """All recorded metrics of the job, in the order they were written."""
        found: builtins.list[Metric] = []
        while True:
            spec = _metrics_spec(job_id, split, name, found[-1].id if found else 0)
            page = Page[Metric].model_validate(self._http.request(spec).json())
            found += page.data
            if not page.has_more or not page.data:
                return found

    def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        """The job's recorded checkpoints, by step."""
        response = self._http.request(RequestSpec("GET", f"/jobs/{job_id}/checkpoints"))
        return ListOf[Checkpoint].model_validate(response.json()).data

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 2.0,
        on_update: JobCallback | None = None,
    ) -> Job:
        """Poll until the job is done; the finished job (succeeded, failed or cancelled).

        Raises:
            WaitTimeoutError: still not done after ``timeout`` seconds (the job keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.retrieve(job_id)
            if on_update is not None:
                on_update(job)
            if job.done:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(job_id, timeout or 0.0, job)
            pause = poll_interval
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            time.sleep(pause)


class AsyncJobs:
    """The async flavour of :class:`Jobs`."""

    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def create(
        self,
        *,
        model: str,
        method: Method,
        training_dataset: str,
        validation_dataset: str | None = None,
        config: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        gpus: int | None = None,
        seed: int | None = None,
        suffix: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
    ) -> Job:
        """See :meth:`Jobs.create`."""
        body = JobCreateRequest(
            model=model,
            method=method,
            training_dataset=training_dataset,
            validation_dataset=validation_dataset,
            config=config,
            overrides=dict(overrides or {}),
            gpus=gpus,
            priority=priority,
            seed=seed,
            suffix=suffix,
            metadata=dict(metadata or {}),
        )
        response = await self._http.request(_create_spec(body, idempotency_key))
        return Job.model_validate(response.json())

    async def check(
        self,
        *,
        model: str,
        method: Method,
        config: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        gpus: int | None = None,
        seed: int | None = None,
    ) -> JobCheck:
        """See :meth:`Jobs.check`."""
        spec = _check_spec(model, method, config, overrides, gpus, seed)
        return JobCheck.model_validate((await self._http.request(spec)).json())

    async def retrieve(self, job_id: str) -> Job:
        """See :meth:`Jobs.retrieve`."""
        response = await self._http.request(RequestSpec("GET", f"/jobs/{job_id}"))
        return Job.model_validate(response.json())

    async def list(
        self,
        *,
        state: str | builtins.list[str] | None = None,
        model: str | None = None,
        metadata: Mapping[str, str] | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> Page[Job]:
        """See :meth:`Jobs.list`."""
        response = await self._http.request(_list_spec(state, model, metadata, limit, after))
        return Page[Job].model_validate(response.json())

    async def cancel(self, job_id: str) -> Job:
        """See :meth:`Jobs.cancel`."""
        response = await self._http.request(RequestSpec("POST", f"/jobs/{job_id}/cancel"))
        return Job.model_validate(response.json())

    async def pause(self, job_id: str) -> Job:
        """See :meth:`Jobs.pause`."""
        response = await self._http.request(RequestSpec("POST", f"/jobs/{job_id}/pause"))
        return Job.model_validate(response.json())

    async def resume(self, job_id: str, *, checkpoint_step: int | None = None) -> Job:
        """See :meth:`Jobs.resume`."""
        response = await self._http.request(_resume_spec(job_id, checkpoint_step))
        return Job.model_validate(response.json())

    def events(
        self, job_id: str, *, follow: bool = False, after: int = 0
    ) -> AsyncIterator[JobEvent]:
        """See :meth:`Jobs.events`."""
        return aevents(self._http, _events(job_id), after, follow=follow)

    async def metrics(
        self, job_id: str, *, split: str | None = None, name: str | None = None
    ) -> builtins.list[Metric]:
        """See :meth:`Jobs.metrics`."""
        found: builtins.list[Metric] = []
        while True:
            spec = _metrics_spec(job_id, split, name, found[-1].id if found else 0)
            page = Page[Metric].model_validate((await self._http.request(spec)).json())
            found += page.data
            if not page.has_more or not page.data:
                return found

    async def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        """See :meth:`Jobs.checkpoints`."""
        response = await self._http.request(RequestSpec("GET", f"/jobs/{job_id}/checkpoints"))
        return ListOf[Checkpoint].model_validate(response.json()).data

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 2.0,
        on_update: JobCallback | None = None,
    ) -> Job:
        """See :meth:`Jobs.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.retrieve(job_id)
            if on_update is not None:
                on_update(job)
            if job.done:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(job_id, timeout or 0.0, job)
            pause = poll_interval
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            await asyncio.sleep(pause)
