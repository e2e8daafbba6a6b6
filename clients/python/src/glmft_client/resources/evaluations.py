"""``client.evaluations``: run a dataset through several models and compare them (create,
retrieve, list, samples, events (past ones, then live), cancel and ``wait``)."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

from glmft_client._event_stream import EventRoute, aevents, events
from glmft_client._http import AsyncHTTP, RequestSpec, SyncHTTP
from glmft_client.errors import WaitTimeoutError
from glmft_client.resources.jobs import new_idempotency_key
from glmft_client.types import (
    CheckpointRef,
    Evaluation,
    EvaluationCreateRequest,
    EvaluationEvent,
    EvaluationSample,
    Page,
)

SAMPLES_PAGE = 1000
#: A model: a base model name, an adapter id, or ``{"job": ..., "checkpoint": step}``.
EvaluationModel = str | CheckpointRef | Mapping[str, Any]
#: Called with the evaluation each time ``wait`` polls it.
EvaluationCallback = Callable[[Evaluation], None]


def _create_spec(
    models: Sequence[EvaluationModel],
    dataset: str,
    options: dict[str, Any],
    idempotency_key: str | None,
) -> RequestSpec:
    refs: list[str | CheckpointRef] = [
        m if isinstance(m, str | CheckpointRef) else CheckpointRef.model_validate(m) for m in models
    ]
    body = EvaluationCreateRequest(models=refs, dataset=dataset, **options)
    return RequestSpec(
        "POST",
        "/evaluations",
        json=body.model_dump(mode="json", exclude_none=True),
        headers={"Idempotency-Key": idempotency_key or new_idempotency_key()},
    )


def _list_spec(
    state: str | builtins.list[str] | None, limit: int, after: str | None
) -> RequestSpec:
    return RequestSpec(
        "GET", "/evaluations", params={"state": state, "limit": limit, "after": after}
    )


def _samples_spec(
    evaluation_id: str, model: str | None, after: int | None, limit: int
) -> RequestSpec:
    params = {"model": model, "after": after, "limit": limit}
    return RequestSpec("GET", f"/evaluations/{evaluation_id}/samples", params=params)


def _events(evaluation_id: str) -> EventRoute[EvaluationEvent]:
    return EventRoute(
        f"evaluation {evaluation_id}", f"/evaluations/{evaluation_id}/events", EvaluationEvent
    )


def _options(**given: Any) -> dict[str, Any]:
    return {k: v for k, v in given.items() if v is not None}


def _page_size(limit: int | None, found: int) -> int:
    return SAMPLES_PAGE if limit is None else max(1, min(SAMPLES_PAGE, limit - found))


class Evaluations:
    """Evaluations: models answering a dataset's prompts, scored against its references."""

    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def create(
        self,
        *,
        models: Sequence[EvaluationModel],
        dataset: str,
        max_new_tokens: int | None = None,
        limit: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Evaluation:
        """Queue an evaluation of ``models`` (1 to 8) on ``dataset``.

        Args:
            models: base model names, adapter ids or ``{"job": id, "checkpoint": step}``.
            dataset: a valid dataset whose conversations end with the reference reply.
            max_new_tokens: most tokens per answer (server default 128).
            limit: evaluate only the first N conversations.
            temperature: 0 (the server's default) decodes greedily.
            top_p: nucleus sampling (with a temperature).
            repetition_penalty: the upstream default is 1.2.
            seed: makes sampling reproducible.
            name: a label for lists.
            idempotency_key: default: a fresh key, reused by this call's retries.

        Raises:
            NotFoundError: a model, adapter or checkpoint is unknown (``param`` names it).
            InvalidRequestError: the dataset or a limit is refused.
        """
        options = _options(
            max_new_tokens=max_new_tokens,
            limit=limit,
            temperature=temperature,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            name=name,
        )
        response = self._http.request(_create_spec(models, dataset, options, idempotency_key))
        return Evaluation.model_validate(response.json())

    def retrieve(self, evaluation_id: str) -> Evaluation:
        """An evaluation with its progress and the metrics of each finished model."""
        response = self._http.request(RequestSpec("GET", f"/evaluations/{evaluation_id}"))
        return Evaluation.model_validate(response.json())

    def list(
        self,
        *,
        state: str | builtins.list[str] | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> Page[Evaluation]:
        """Your evaluations, newest first."""
        response = self._http.request(_list_spec(state, limit, after))
        return Page[Evaluation].model_validate(response.json())

    def samples(
        self,
        evaluation_id: str,
        *,
        model: str | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> builtins.list[EvaluationSample]:
        """The samples by index after ``after`` (all, or the first ``limit``), each with every
        model's answer so far (only ``model``'s when given)."""
        found: builtins.list[EvaluationSample] = []
        while limit is None or len(found) < limit:
            spec = _samples_spec(evaluation_id, model, after, _page_size(limit, len(found)))
            page = Page[EvaluationSample].model_validate(self._http.request(spec).json())
            found += page.data
            if not page.has_more or not page.data:
                break
            after = page.data[-1].index
        return found

    def cancel(self, evaluation_id: str) -> Evaluation:
        """Cancel a queued or running evaluation; the answers stored so far stay."""
        spec = RequestSpec("POST", f"/evaluations/{evaluation_id}/cancel")
        return Evaluation.model_validate(self._http.request(spec).json())

    def events(
        self, evaluation_id: str, *, follow: bool = False, after: int = 0
    ) -> Iterator[EvaluationEvent]:
        """The evaluation's events in order; with ``follow`` the live stream until it ends
        (a dropped stream is reopened after the last event received, ``max_retries`` times
        in a row at most; then ``APIConnectionError``)."""
        return events(self._http, _events(evaluation_id), after, follow=follow)

    def wait(
        self,
        evaluation_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 2.0,
        on_update: EvaluationCallback | None = None,
    ) -> Evaluation:
        """Poll until the evaluation is finished (succeeded, failed or cancelled).

        Raises:
            WaitTimeoutError: still not finished after ``timeout`` seconds (it keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            evaluation = self.retrieve(evaluation_id)
            if on_update is not None:
                on_update(evaluation)
            if evaluation.done:
                return evaluation
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(evaluation_id, timeout or 0.0, evaluation, kind="evaluation")
            pause = poll_interval
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            time.sleep(pause)


class AsyncEvaluations:
    """The async flavour of :class:`Evaluations`."""

    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def create(
        self,
        *,
        models: Sequence[EvaluationModel],
        dataset: str,
        max_new_tokens: int | None = None,
        limit: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Evaluation:
        """See :meth:`Evaluations.create`."""
        options = _options(
            max_new_tokens=max_new_tokens,
            limit=limit,
            temperature=temperature,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            name=name,
        )
        spec = _create_spec(models, dataset, options, idempotency_key)
        return Evaluation.model_validate((await self._http.request(spec)).json())

    async def retrieve(self, evaluation_id: str) -> Evaluation:
        """See :meth:`Evaluations.retrieve`."""
        response = await self._http.request(RequestSpec("GET", f"/evaluations/{evaluation_id}"))
        return Evaluation.model_validate(response.json())

    async def list(
        self,
        *,
        state: str | builtins.list[str] | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> Page[Evaluation]:
        """See :meth:`Evaluations.list`."""
        response = await self._http.request(_list_spec(state, limit, after))
        return Page[Evaluation].model_validate(response.json())

    async def samples(
        self,
        evaluation_id: str,
        *,
        model: str | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> builtins.list[EvaluationSample]:
        """See :meth:`Evaluations.samples`."""
        found: builtins.list[EvaluationSample] = []
        while limit is None or len(found) < limit:
            spec = _samples_spec(evaluation_id, model, after, _page_size(limit, len(found)))
            page = Page[EvaluationSample].model_validate((await self._http.request(spec)).json())
            found += page.data
            if not page.has_more or not page.data:
                break
            after = page.data[-1].index
        return found

    async def cancel(self, evaluation_id: str) -> Evaluation:
        """See :meth:`Evaluations.cancel`."""
        spec = RequestSpec("POST", f"/evaluations/{evaluation_id}/cancel")
        return Evaluation.model_validate((await self._http.request(spec)).json())

    def events(
        self, evaluation_id: str, *, follow: bool = False, after: int = 0
    ) -> AsyncIterator[EvaluationEvent]:
        """See :meth:`Evaluations.events`."""
        return aevents(self._http, _events(evaluation_id), after, follow=follow)

    async def wait(
        self,
        evaluation_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 2.0,
        on_update: EvaluationCallback | None = None,
    ) -> Evaluation:
        """See :meth:`Evaluations.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            evaluation = await self.retrieve(evaluation_id)
            if on_update is not None:
                on_update(evaluation)
            if evaluation.done:
                return evaluation
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(evaluation_id, timeout or 0.0, evaluation, kind="evaluation")
            pause = poll_interval
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            await asyncio.sleep(pause)
