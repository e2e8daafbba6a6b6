"""The API bench's in-process breakdown: the two handlers' bodies timed step by step (SQL time
from SQLAlchemy cursor events), a cProfile of each, and whole requests through the ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import pstats
import statistics
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from load_client import latency_summary
from service_fixture import job_body
from sqlalchemy import Engine, event
from sqlmodel import Session

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.db import make_engine  # noqa: E402
from core.models import Job  # noqa: E402
from core.settings import Settings  # noqa: E402

BODY_TOTAL = "handler body, total"


class StepTimer:
    """Accumulates wall time per named step, plus SQL statement time from cursor events."""

    def __init__(self, engine: Engine) -> None:
        self.totals: defaultdict[str, float] = defaultdict(float)
        self.statements = 0
        self._started: list[float] = []
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, *_: Any) -> None:
        self._started.append(time.perf_counter())

    def _after(self, *_: Any) -> None:
        self.totals["sql statements (cursor.execute)"] += time.perf_counter() - self._started.pop()
        self.statements += 1

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[name] += time.perf_counter() - started

        return timed

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - started

    def reset(self) -> None:
        self.totals.clear()
        self.statements = 0


def breakdown(settings: Settings, dataset_id: str, n: int) -> dict[str, Any]:
    """Time the steps of the two handlers' bodies in this process (sequential, no HTTP).

    POST: ``api.services.jobs.create_job`` (request hash, idempotency lookup, model and dataset
    lookups, config resolution, INSERT + COMMIT, Redis publish) + queue position + the public view
    and its JSON. GET: ``session.get`` + queue position + latest metrics + the public view.
    """
    from api.queue import CeleryEnqueuer
    from api.schemas.jobs import JobCreate
    from api.services import job_queries
    from api.services import jobs as service

    engine = make_engine(settings.resolved_database_url)
    timer = StepTimer(engine)
    enqueuer = CeleryEnqueuer(settings.resolved_broker_url)
    patched = ("request_hash", "_replay", "resolve_model", "usable_dataset", "resolve_config")
    originals = {name: getattr(service, name) for name in patched}
    original_enqueue = enqueuer.enqueue_job
    for name in patched:
        setattr(service, name, timer.wrap(name, originals[name]))
    setattr(enqueuer, "enqueue_job", timer.wrap("enqueue (Redis publish)", original_enqueue))  # noqa: B010
    job_in = JobCreate.model_validate(job_body(dataset_id))
    created: list[str] = []

    def post_once() -> None:
        with Session(engine, expire_on_commit=False) as session:
            setattr(session, "commit", timer.wrap("session.commit", session.commit))  # noqa: B010
            with timer.step(BODY_TOTAL):
                job, _ = service.create_job(
                    session=session,
                    settings=settings,
                    enqueuer=enqueuer,
                    tenant=settings.default_tenant,
                    job_in=job_in,
                    idempotency_key=uuid.uuid4().hex,
                )
                with timer.step("queue_position"):
                    position = job_queries.queue_position(session, job)
                with timer.step("job_public + JSON"):
                    job_queries.job_public(job, queue_position=position).model_dump_json()
            created.append(job.id)

    def get_once(job_id: str) -> None:
        with Session(engine, expire_on_commit=False) as session, timer.step(BODY_TOTAL):
            with timer.step("session.get (job)"):
                job = session.get(Job, job_id)
            if job is None:
                raise LookupError(job_id)
            with timer.step("queue_position"):
                position = job_queries.queue_position(session, job)
            with timer.step("latest_metrics"):
                metrics = job_queries.latest_metrics(session, job.id)
            with timer.step("job_public + JSON"):
                job_queries.job_public(
                    job, queue_position=position, latest_metrics=metrics
                ).model_dump_json()

    def measure(fn: Callable[[int], None]) -> dict[str, Any]:
        for i in range(min(5, n)):  # warm caches and the connection pool
            fn(i)
        timer.reset()
        for i in range(n):
            fn(i)
        total = timer.totals[BODY_TOTAL]
        steps = {
            name: round(1000 * seconds / n, 3)
            for name, seconds in sorted(timer.totals.items(), key=lambda kv: -kv[1])
        }
        statements = round(timer.statements / n, 2)
        share_in_sql = round(timer.totals["sql statements (cursor.execute)"] / total, 3)
        profile = cProfile.Profile()
        profile.enable()
        for i in range(min(n, 50)):
            fn(i)
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(25)
        return {
            "requests": n,
            "ms_per_request": steps,
            "sql_statements_per_request": statements,
            "share_in_sql": share_in_sql,
            "cprofile_top_cumulative": text.getvalue().splitlines()[:60],
        }

    try:
        post = measure(lambda _i: post_once())
        get = measure(lambda i: get_once(created[i % len(created)]))
    finally:
        for name, fn in originals.items():
            setattr(service, name, fn)
        enqueuer.close()
        engine.dispose()
    asgi = asyncio.run(through_asgi(settings, dataset_id, n))
    post["through_asgi_ms"], get["through_asgi_ms"] = asgi["POST /jobs"], asgi["GET /jobs/{id}"]
    return {"post_jobs": post, "get_job": get}


async def through_asgi(settings: Settings, dataset_id: str, n: int) -> dict[str, dict[str, float]]:
    """Whole requests through the app in this process (``httpx.ASGITransport``: FastAPI,
    middleware, validation, the handler in the thread pool, serialization; no uvicorn, no socket),
    one at a time."""
    from api.main import create_app

    app = create_app(settings)
    body = job_body(dataset_id)
    ids: list[str] = []
    result: dict[str, dict[str, float]] = {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as c,
    ):

        async def post(_index: int) -> httpx.Response:
            response = await c.post(
                "/jobs", json=body, headers={"Idempotency-Key": f"api-bench-{uuid.uuid4().hex}"}
            )
            ids.append(response.json()["id"])
            return response

        async def get(index: int) -> httpx.Response:
            return await c.get(f"/jobs/{ids[index % len(ids)]}")

        for name, fn in (("POST /jobs", post), ("GET /jobs/{id}", get)):
            for i in range(min(5, n)):
                (await fn(i)).raise_for_status()
            seconds, sizes = [], []
            for i in range(n):
                started = time.perf_counter()
                response = await fn(i)
                seconds.append(time.perf_counter() - started)
                response.raise_for_status()
                sizes.append(len(response.content))
            result[name] = {
                **latency_summary(seconds),
                "response_bytes_mean": round(statistics.fmean(sizes)),
            }
    return result
