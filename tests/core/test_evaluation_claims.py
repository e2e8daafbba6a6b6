"""The evaluation runner's claim and fence on a real store (SQLite and PostgreSQL): one claim
wins, a runner whose heartbeat went stale is taken over and can write nothing more, a cancel
ends the owner's writes, and a finished evaluation cannot be cancelled."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from core.errors import InvalidEvaluationTransition
from core.evaluations import ClaimLost, cancel, claim_next, fence, release
from core.models import Evaluation, utcnow


def queued(session: Session) -> Evaluation:
    evaluation = Evaluation(
        tenant_id="default",
        state="queued",
        models=[{"name": "glm-4-tiny", "ref": "glm-4-tiny"}],
        dataset_id="ds-1",
        samples=3,
    )
    session.add(evaluation)
    session.commit()
    return evaluation


def test_one_of_concurrent_claims_wins(engine: Engine) -> None:
    with Session(engine) as session:
        evaluation_id = queued(session).id
    claimed: list[str | None] = []

    def take(runner: str) -> None:
        with Session(engine) as session:
            found = claim_next(session, runner, stale_after_s=60)
            claimed.append(found.runner if found else None)

    threads = [threading.Thread(target=take, args=(f"r{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [c for c in claimed if c is not None]
    assert len(winners) == 1 and len(claimed) == 4
    with Session(engine) as session:
        row = session.get(Evaluation, evaluation_id)
        assert row is not None and (row.state, row.runner) == ("running", winners[0])


def test_a_stale_runner_is_taken_over_and_fenced_out(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        evaluation = queued(session)
        assert claim_next(session, "old", stale_after_s=60) is not None
        fence(session, evaluation.id, "old", done=1)
        session.commit()
        assert claim_next(session, "new", stale_after_s=60) is None  # it still beats
        later = utcnow() + timedelta(seconds=61)
        taken = claim_next(session, "new", stale_after_s=60, now=later)
        assert taken is not None and (taken.runner, taken.done) == ("new", 1)
        with pytest.raises(ClaimLost):
            fence(session, evaluation.id, "old", done=2)
        assert not release(session, evaluation, "old")  # not its to hand back
        assert release(session, evaluation, "new")
        session.refresh(evaluation)
        assert (evaluation.state, evaluation.runner, evaluation.done) == ("queued", None, 1)


def test_cancel_ends_the_owners_writes(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        evaluation = queued(session)
        claim_next(session, "runner", stale_after_s=60)
        assert cancel(session, evaluation).state == "cancelled"
        with pytest.raises(ClaimLost):
            fence(session, evaluation.id, "runner")
        with pytest.raises(InvalidEvaluationTransition):
            cancel(session, evaluation)
        assert claim_next(session, "other", stale_after_s=0) is None
