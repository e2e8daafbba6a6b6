"""``/evaluations``: run a dataset through several models and compare their answers (create,
list, read with metrics side by side, samples with every model's output, events, cancel)."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.deps import EngineDep, SessionDep, SettingsDep, TenantDep
from api.routes.chat import chat_service
from api.schemas.common import Page, error_responses
from api.schemas.evaluations import (
    EvaluationCreate,
    EvaluationEventPublic,
    EvaluationPublic,
    EvaluationSamplePublic,
)
from api.services import evaluation_queries as queries
from api.services import evaluations as service
from api.sse import SSE_DOC, after_id, evaluation_event_stream, event_page, live_stream
from core.evaluations import EvaluationState, cancel
from core.models import Evaluation, EvaluationEvent

router = APIRouter(prefix="/evaluations", tags=["evaluations"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Same key + same body → the same evaluation (200); other body → 409.",
    ),
]
EvaluationIdPath = Annotated[
    str, Path(description="The evaluation id.", examples=["eval-5b7c9d1e3f5a7b9c1d3e5f7a"])
]


def get_evaluation(
    evaluation_id: EvaluationIdPath, session: SessionDep, tenant: TenantDep
) -> Evaluation:
    """The caller's evaluation ``evaluation_id`` (another tenant's is not found)."""
    return queries.get_evaluation(session, tenant, evaluation_id)


EvaluationDep = Annotated[Evaluation, Depends(get_evaluation)]


@router.post(
    "",
    status_code=201,
    response_model=EvaluationPublic,
    responses={
        200: {"model": EvaluationPublic, "description": "Replay of this Idempotency-Key."},
        **error_responses(404, 409, 503),
    },
)
def create_evaluation(
    body: EvaluationCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> EvaluationPublic:
    """Validate an evaluation (every model, the dataset, the limits), store its samples and
    queue it; the process serving chat runs it."""
    evaluation, created = service.create_evaluation(
        session=session,
        settings=settings,
        chat=chat_service(request),
        tenant=tenant,
        body=body,
        idempotency_key=idempotency_key,
    )
    if created:
        runner = getattr(request.app.state, "evaluations", None)
        if runner is not None:
            runner.wake()
    else:
        response.status_code = 200
    return queries.evaluation_public(evaluation)


@router.get("", response_model=Page[EvaluationPublic], responses=error_responses())
def list_evaluations(
    session: SessionDep,
    tenant: TenantDep,
    state: Annotated[
        list[EvaluationState] | None, Query(description="Repeat to match any.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> Page[EvaluationPublic]:
    """Your evaluations, newest first."""
    rows, has_more, cursor = queries.list_evaluations(
        session=session,
        tenant=tenant,
        states=[s.value for s in state or []],
        after=after,
        limit=limit,
    )
    data = [queries.evaluation_public(e) for e in rows]
    return Page(data=data, has_more=has_more, next_cursor=cursor)


@router.get("/{evaluation_id}", response_model=EvaluationPublic, responses=error_responses(404))
def read_evaluation(evaluation: EvaluationDep) -> EvaluationPublic:
    """An evaluation with its progress and each finished model's metrics, side by side."""
    return queries.evaluation_public(evaluation)


@router.get(
    "/{evaluation_id}/samples",
    response_model=Page[EvaluationSamplePublic],
    responses=error_responses(404),
)
def read_samples(
    evaluation: EvaluationDep,
    session: SessionDep,
    model: Annotated[str | None, Query(description="Only this model's outputs.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=0, description="Samples with a larger index.")] = None,
) -> Page[EvaluationSamplePublic]:
    """The samples by index: prompt, reference, and every model's output and scores so far."""
    samples, has_more = queries.list_samples(
        session=session, evaluation=evaluation, model=model, after=after, limit=limit
    )
    cursor = str(samples[-1].index) if has_more and samples else None
    return Page(data=samples, has_more=has_more, next_cursor=cursor)


@router.get(
    "/{evaluation_id}/events",
    response_model=Page[EvaluationEventPublic],
    responses={**SSE_DOC, **error_responses(404)},
)
def read_events(
    evaluation: EvaluationDep,
    session: SessionDep,
    engine: EngineDep,
    request: Request,
    after: Annotated[int | None, Query(ge=0, description="Events with a larger id.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Page[EvaluationEventPublic] | StreamingResponse:
    """The evaluation's events in order; `Accept: text/event-stream` follows it live."""
    start = after_id(after, last_event_id)
    frames = partial(evaluation_event_stream, engine, evaluation.id, start)
    stream = live_stream(request, session, frames)
    if stream is not None:
        return stream
    owner = EvaluationEvent.evaluation_id == evaluation.id
    return event_page(session, EvaluationEvent, owner, start, limit, EvaluationEventPublic)


@router.post(
    "/{evaluation_id}/cancel", response_model=EvaluationPublic, responses=error_responses(404, 409)
)
def cancel_evaluation(evaluation: EvaluationDep, session: SessionDep) -> EvaluationPublic:
    """Cancel a queued or running evaluation at once; the answers stored so far stay."""
    return queries.evaluation_public(cancel(session, evaluation))
