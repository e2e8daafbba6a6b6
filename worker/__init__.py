"""glmft worker: the Celery app of a GPU node and the runner that supervises the trainer.

``celery -A worker worker -Q training`` finds the app as ``worker.app``; it is imported lazily so
the process-level modules (gpus, launcher, events_tail) stay importable without Celery settings.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from worker.celery_app import app

        return app
    raise AttributeError(name)
