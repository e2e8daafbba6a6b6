"""Read side of evaluations: the caller's evaluation, filtered pages, the public view with the
models' metrics side by side, samples with every model's output."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from api.pagination import newest_first, split_page
from api.schemas.evaluations import (
    EvaluationError,
    EvaluationProgress,
    EvaluationPublic,
    EvaluationSamplePublic,
    SampleOutput,
)
from core.errors import EvaluationNotFound, Invalid
from core.models import Evaluation, EvaluationOutput, EvaluationSample


def get_evaluation(session: Session, tenant: str, evaluation_id: str) -> Evaluation:
    """The caller's evaluation; another tenant's is not found."""
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None or evaluation.tenant_id != tenant:
        raise EvaluationNotFound(f"evaluation {evaluation_id} not found", param="evaluation_id")
    return evaluation


def list_evaluations(
    *, session: Session, tenant: str, states: list[str], after: str | None, limit: int
) -> tuple[list[Evaluation], bool, str | None]:
    """The caller's evaluations, newest first, filtered by state(s)."""
    statement = select(Evaluation).where(Evaluation.tenant_id == tenant)
    if states:
        statement = statement.where(col(Evaluation.state).in_(states))
    rows = session.exec(newest_first(statement, Evaluation, after, limit)).all()
    return split_page(rows, limit)


def model_names(evaluation: Evaluation) -> list[str]:
    """The evaluation's models' names, in the order they were given."""
    return [str(m["name"]) for m in evaluation.models]


def evaluation_public(evaluation: Evaluation) -> EvaluationPublic:
    """The public view of ``evaluation``: metrics in the order of its models."""
    names = model_names(evaluation)
    error = None
    if evaluation.error_code:
        error = EvaluationError(
            code=evaluation.error_code,
            message=evaluation.error_message or "",
            param=evaluation.error_param,
        )
    params = evaluation.params
    return EvaluationPublic(
        id=evaluation.id,
        name=evaluation.name,
        state=evaluation.state,
        models=names,
        dataset=evaluation.dataset_id,
        max_new_tokens=params["max_new_tokens"],
        limit=params.get("limit"),
        temperature=params["temperature"],
        top_p=params["top_p"],
        repetition_penalty=params["repetition_penalty"],
        seed=params.get("seed"),
        samples=evaluation.samples,
        skipped=evaluation.skipped,
        progress=EvaluationProgress(done=evaluation.done, total=evaluation.samples * len(names)),
        metrics={n: evaluation.metrics[n] for n in names if n in evaluation.metrics},
        error=error,
        created_at=evaluation.created_at,
        started_at=evaluation.started_at,
        finished_at=evaluation.finished_at,
    )


def list_samples(
    *,
    session: Session,
    evaluation: Evaluation,
    model: str | None,
    after: int | None,
    limit: int,
) -> tuple[list[EvaluationSamplePublic], bool]:
    """Samples by index after ``after``, each with its outputs (only ``model``'s when given)."""
    if model is not None and model not in model_names(evaluation):
        raise Invalid(
            f"{model} is not one of this evaluation's models: {', '.join(model_names(evaluation))}",
            param="model",
        )
    statement = select(EvaluationSample).where(EvaluationSample.evaluation_id == evaluation.id)
    if after is not None:
        statement = statement.where(col(EvaluationSample.index) > after)
    rows = session.exec(statement.order_by(col(EvaluationSample.index)).limit(limit + 1)).all()
    page = rows[:limit]
    names = [model] if model is not None else model_names(evaluation)
    outputs = _outputs(session, evaluation.id, [s.index for s in page], names)
    samples = [
        EvaluationSamplePublic(
            index=s.index,
            line=s.line,
            messages=s.messages,
            reference=s.reference,
            outputs=outputs.get(s.index, {}),
        )
        for s in page
    ]
    return samples, len(rows) > limit


def _outputs(
    session: Session, evaluation_id: str, indexes: Sequence[int], names: list[str]
) -> dict[int, dict[str, SampleOutput]]:
    """``{index: {model: output}}``, the models in the order of ``names``."""
    if not indexes:
        return {}
    statement = select(EvaluationOutput).where(
        EvaluationOutput.evaluation_id == evaluation_id,
        col(EvaluationOutput.index).in_(list(indexes)),
        col(EvaluationOutput.model).in_(names),
    )
    found: dict[int, dict[str, SampleOutput]] = {}
    for row in session.exec(statement).all():
        found.setdefault(row.index, {})[row.model] = SampleOutput(
            text=row.text,
            finish_reason=row.finish_reason,
            completion_tokens=row.completion_tokens,
            scores=row.scores,
        )
    return {i: {n: by[n] for n in names if n in by} for i, by in found.items()}
