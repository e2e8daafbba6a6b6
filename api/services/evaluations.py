"""Evaluations: admission (every model resolved, the dataset read into samples, idempotent
create)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from api.schemas.evaluations import EvaluationCreate
from api.services.jobs import usable_dataset
from core.errors import AppError, IdempotencyKeyReused, Invalid, InvalidDataset
from core.evaluations import EvaluationState, add_event
from core.models import Evaluation, EvaluationSample
from core.settings import Settings
from trainer.datafiles import DataFileError
from trainer.validation import iter_conversations
from trainer.vision import is_vision_model

if TYPE_CHECKING:
    from api.services.chat import ChatService

_TURN_ROLES = ("user", "observation")
#: Positions of skipped conversations listed in the ``created`` event (the count is exact).
MAX_LISTED_SKIPS = 100


def split_conversation(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str] | None:
    """``(prompt, reference)``: the last assistant reply is the reference, every message before
    it the prompt; ``None`` when the conversation does not end with a non-empty assistant reply
    to a user or observation message. A tool call's reference is ``name\\narguments``, the
    text GLM-4 generates for it."""
    if len(messages) < 2 or messages[-1].get("role") != "assistant":
        return None
    last, prompt = messages[-1], messages[:-1]
    reference = str(last.get("content") or "")
    if last.get("metadata"):
        reference = f"{last['metadata']}\n{reference}"
    if not reference.strip() or prompt[-1].get("role") not in _TURN_ROLES:
        return None
    return prompt, reference


def read_samples(path: Path, limit: int | None) -> tuple[list[EvaluationSample], list[int]]:
    """The samples of the dataset's first ``limit`` conversations (all when ``None``), and the
    indexes of the conversations skipped."""
    samples: list[EvaluationSample] = []
    skipped: list[int] = []
    for record in iter_conversations(path, strict=False):
        if limit is not None and record.index >= limit:
            break
        split = split_conversation(record.obj["messages"])
        if split is None:
            skipped.append(record.index)
            continue
        prompt, reference = split
        samples.append(
            EvaluationSample(
                evaluation_id="",
                tenant_id="",
                index=record.index,
                line=record.line,
                messages=prompt,
                reference=reference,
            )
        )
    return samples, skipped


def request_hash(body: EvaluationCreate) -> str:
    """A digest of the request's meaning (defaults filled in, key order irrelevant)."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(session: Session, tenant: str, key: str, digest: str) -> Evaluation | None:
    statement = select(Evaluation).where(
        Evaluation.tenant_id == tenant, Evaluation.idempotency_key == key
    )
    found = session.exec(statement).first()
    if found is not None and found.request_hash != digest:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was used for another request (evaluation {found.id})",
            param="Idempotency-Key",
            details={"evaluation_id": found.id},
        )
    return found


def _resolve_models(
    session: Session, chat: ChatService, tenant: str, body: EvaluationCreate
) -> list[dict[str, Any]]:
    models: list[dict[str, Any]] = []
    names: dict[str, int] = {}
    for position, ref in enumerate(body.models):
        param = f"models.{position}"
        try:
            target = chat.resolve(session, tenant, ref)
        except AppError as exc:  # the same error, naming the list element at fault
            suffix = exc.param.partition(".")[2] if exc.param else ""
            where = f"{param}.{suffix}" if suffix else param
            raise type(exc)(exc.message, param=where, details=exc.details) from exc
        if is_vision_model(target.model_dir):
            raise Invalid(
                f"{target.name} is a vision model; evaluations run text models", param=param
            )
        if target.name in names:
            raise Invalid(
                f"{target.name} is named twice (models.{names[target.name]} and {param})",
                param=param,
            )
        names[target.name] = position
        dumped = ref if isinstance(ref, str) else ref.model_dump()
        models.append({"name": target.name, "ref": dumped})
    return models


def build_evaluation(
    *, session: Session, settings: Settings, chat: ChatService, tenant: str, body: EvaluationCreate
) -> tuple[Evaluation, list[EvaluationSample], list[int]]:
    """Validate ``body`` fully: the (unsaved) queued evaluation, its samples, the skipped."""
    if body.max_new_tokens > settings.chat.max_new_tokens:
        raise Invalid(
            f"max_new_tokens {body.max_new_tokens} is over this server's limit "
            f"{settings.chat.max_new_tokens}",
            param="max_new_tokens",
        )
    models = _resolve_models(session, chat, tenant, body)
    dataset = usable_dataset(session, tenant, body.dataset, "dataset")
    try:
        samples, skipped = read_samples(Path(dataset.path), body.limit)
    except DataFileError as exc:
        raise InvalidDataset(
            f"dataset {dataset.id} cannot be read: {exc}", param="dataset"
        ) from exc
    if not samples:
        raise InvalidDataset(
            f"no conversation of dataset {dataset.id} ends with an assistant reply to compare "
            f"with ({len(skipped)} skipped)",
            param="dataset",
        )
    most = settings.evaluations.max_samples
    if len(samples) > most:
        raise Invalid(
            f"dataset {dataset.id} holds {len(samples)} samples; an evaluation takes at most "
            f"{most} (set limit)",
            param="limit",
        )
    params = body.model_dump(
        include={"max_new_tokens", "limit", "temperature", "top_p", "repetition_penalty", "seed"}
    )
    evaluation = Evaluation(
        tenant_id=tenant,
        name=body.name,
        state=EvaluationState.QUEUED.value,
        models=models,
        dataset_id=dataset.id,
        params=params,
        samples=len(samples),
        skipped=len(skipped),
    )
    return evaluation, samples, skipped


def create_evaluation(
    *,
    session: Session,
    settings: Settings,
    chat: ChatService,
    tenant: str,
    body: EvaluationCreate,
    idempotency_key: str | None,
) -> tuple[Evaluation, bool]:
    """Store a queued evaluation with its samples, or replay the one ``idempotency_key`` made.
    Returns ``(evaluation, created)``."""
    digest = request_hash(body)
    if idempotency_key is not None:
        existing = _replay(session, tenant, idempotency_key, digest)
        if existing is not None:
            return existing, False
    evaluation, samples, skipped = build_evaluation(
        session=session, settings=settings, chat=chat, tenant=tenant, body=body
    )
    evaluation.idempotency_key, evaluation.request_hash = idempotency_key, digest
    session.add(evaluation)
    for sample in samples:
        sample.evaluation_id, sample.tenant_id = evaluation.id, tenant
    session.add_all(samples)
    add_event(
        session,
        evaluation,
        "created",
        f"{len(samples)} samples x {len(evaluation.models)} models queued"
        + (
            f"; {len(skipped)} conversations without a final assistant reply skipped"
            if skipped
            else ""
        ),
        samples=len(samples),
        skipped=len(skipped),
        skipped_indexes=skipped[:MAX_LISTED_SKIPS],
    )
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the insert
        session.rollback()
        existing = _replay(session, tenant, idempotency_key or "", digest)
        if existing is None:
            raise
        return existing, False
    return evaluation, True
