"""The evaluation runner: a thread of each process that serves chat itself (started and stopped
by the app's lifespan), which claims queued evaluations from SQL one at a time and runs them on
this process's engines.

A runner that stops hands its evaluation back to the queue, so the next process (or another
replica on the same store) resumes it; one that dies stops beating, and its evaluation is taken
over once its heartbeat is ``heartbeat_timeout_s`` old. Either way only the answers not stored
yet are generated again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from api.services.evaluation_run import EvaluationRun, Stopping
from api.services.evaluation_store import RunStore
from core.errors import AppError
from core.evaluations import ClaimLost, claim_next, release
from core.models import Evaluation
from core.settings import Settings

if TYPE_CHECKING:
    from api.services.chat import ChatService

logger = logging.getLogger(__name__)


class EvaluationRunner:
    """Claims and runs evaluations on a thread of its own.

    Args:
        db: returns the app's SQL engine (it exists once the lifespan started the store).
        chat: this process's chat service (its engines run the requests).
        settings: the app's settings.
    """

    def __init__(self, db: Callable[[], Engine], chat: ChatService, settings: Settings) -> None:
        self.db = db
        self.chat = chat
        self.settings = settings
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once the store is set up)."""
        self._thread = threading.Thread(target=self._loop, name="evaluations", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for work now (an evaluation was just created)."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Hand the running evaluation back and end the thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                evaluation = self._claim()
            except SQLAlchemyError as exc:  # the store is down: try again later
                logger.warning("evaluations: cannot reach the store: %s", exc)
                evaluation = None
            if evaluation is not None:
                self._run(evaluation)
                continue
            self._wake.wait(self.settings.evaluations.poll_interval_s)
            self._wake.clear()

    def _claim(self) -> Evaluation | None:
        with Session(self.db(), expire_on_commit=False) as session:
            return claim_next(session, self.id, stale_after_s=self.settings.heartbeat_timeout_s)

    def _run(self, evaluation: Evaluation) -> None:
        logger.info("evaluation %s: claimed by %s", evaluation.id, self.id)
        run = EvaluationRun(
            db=self.db(),
            chat=self.chat,
            settings=self.settings,
            evaluation=evaluation,
            runner=self.id,
            stopping=self._stopping,
        )
        try:
            run.execute()
            logger.info("evaluation %s: succeeded", evaluation.id)
        except ClaimLost:
            logger.info("evaluation %s: cancelled or taken over; stopped", evaluation.id)
        except Stopping:
            try:
                with Session(self.db(), expire_on_commit=False) as session:
                    release(session, evaluation, self.id)
                logger.info("evaluation %s: handed back to the queue", evaluation.id)
            except SQLAlchemyError:  # taken over once its heartbeat is stale
                logger.exception("evaluation %s: could not hand it back", evaluation.id)
        except AppError as exc:
            logger.info("evaluation %s: failed: %s", evaluation.id, exc.message)
            self._fail(run.store, exc)
        except Exception as exc:  # the thread must outlive any one evaluation
            logger.exception("evaluation %s: unexpected error", evaluation.id)
            self._fail(run.store, AppError(f"internal error: {type(exc).__name__}: {exc}"))

    @staticmethod
    def _fail(store: RunStore, error: AppError) -> None:
        try:
            store.fail(error)
        except SQLAlchemyError:  # its heartbeat stops; another runner takes it over
            logger.exception("evaluation %s: could not record its failure", store.evaluation.id)
