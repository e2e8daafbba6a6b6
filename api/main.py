"""The FastAPI application factory: ``uvicorn --factory api.main:create_app``.

Nothing happens at import. On startup the store is migrated (``core.db.prepare``) and the base
model registry of the settings is mirrored into ``base_models``; a store that is down at
startup leaves the app alive but not ready (``/readyz`` retries the migration).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, func, select
from starlette.concurrency import run_in_threadpool

from api import scopes
from api.chat_proxy import ChatProxyMiddleware
from api.dashboard import install_dashboard
from api.errors import install_error_handlers
from api.key_cache import KeyCache
from api.middleware import RequestContextMiddleware, RequestGuardMiddleware
from api.queue import Enqueuer, enqueuer_for
from api.queue_positions import QueuePositions
from api.routes import api_router
from api.services.chat import ChatService
from api.services.datasets import sweep_orphan_uploads
from api.services.evaluation_runner import EvaluationRunner
from api.telemetry import Telemetry
from core.db import make_engine, prepare
from core.models import BaseModelRecord
from core.settings import Settings, get_settings
from core.team_models import ApiKey

logger = logging.getLogger(__name__)

DESCRIPTION = """Fine-tune GLM-4 chat models (LoRA, P-Tuning v2, full SFT) as a service.

Every 4xx/5xx answers with one envelope, `{"error": {"code", "message", "param", "details"},
"request_id"}`, and every response carries `X-Request-ID`."""


def sync_registry(engine: Engine, settings: Settings) -> None:
    """Make ``base_models`` mirror ``settings.models`` (adapters keep names, never paths).

    Several worker processes of one server do this at once: the one whose insert loses the
    race finds the rows the other wrote, and writes its own values over them."""
    try:
        _sync_registry(engine, settings)
    except (IntegrityError, StaleDataError):
        _sync_registry(engine, settings)


def _sync_registry(engine: Engine, settings: Settings) -> None:
    with Session(engine) as session:
        rows = {r.name: r for r in session.exec(select(BaseModelRecord)).all()}
        for name, entry in settings.models.items():
            row = rows.pop(name, None) or BaseModelRecord(name=name, path="")
            row.path, row.description = str(entry.path), entry.description
            session.add(row)
        for stale in rows.values():
            session.delete(stale)
        session.commit()


def _announce_auth(engine: Engine, settings: Settings) -> None:
    """Say loudly how callers are let in: the local mode, or keys (and whether any exist)."""
    if settings.allow_anonymous:
        logger.warning(
            "LOCAL MODE: requests without an API key act as tenant %r with every scope "
            "(GLMFT_ALLOW_ANONYMOUS); anything that reaches this port can use it",
            settings.default_tenant,
        )
        return
    with Session(engine) as session:
        stored = session.exec(select(func.count()).where(col(ApiKey.revoked_at).is_(None))).one()
    if not stored and not settings.api_keys:
        logger.warning(
            "no API key exists: every request answers 401 until one is made "
            "(glmft keys create --tenant NAME --scopes admin) or GLMFT_API_KEYS is set"
        )


#: a pooled connection unused this long is tested before a request gets it (core.db)
PING_IDLE_S = 10.0


def _start_store(app: FastAPI, settings: Settings) -> None:
    try:
        app.state.engine = prepare(
            settings, pool_size=settings.api_threads, ping_idle_s=PING_IDLE_S
        )
        sync_registry(app.state.engine, settings)
        _announce_auth(app.state.engine, settings)
        app.state.schema_ready = True
    except (SQLAlchemyError, OSError):
        logger.exception("store unavailable at startup; /readyz will report it")
        app.state.engine = make_engine(
            settings.resolved_database_url, pool_size=settings.api_threads, ping_idle_s=PING_IDLE_S
        )
        app.state.schema_ready = False


async def _sweep_uploads(app: FastAPI, settings: Settings) -> None:
    """Now and then (at startup first), remove what uploads of a killed process left."""
    every_s = min(3600.0, max(60.0, settings.upload_orphan_grace_s / 2))
    while True:
        try:
            await run_in_threadpool(
                sweep_orphan_uploads,
                engine=app.state.engine,
                artifacts=settings.artifacts,
                grace_s=settings.upload_orphan_grace_s,
            )
        except (SQLAlchemyError, OSError):
            logger.exception("upload sweep failed; retrying in %.0f s", every_s)
        await asyncio.sleep(every_s)


def _freeze_startup_objects() -> None:
    """Keep what startup made (modules, the app, the ORM's and pydantic's machinery, about
    180,000 objects) out of the garbage collector's full passes: one pass over them takes a
    quarter of a second, every request waits for it, and the requests' own garbage comes and
    goes without them."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None, *, enqueuer: Enqueuer | None = None) -> FastAPI:
    """Build the API.

    Args:
        settings: defaults to ``get_settings()`` (the ``GLMFT_`` environment).
        enqueuer: defaults to ``api.queue.enqueuer_for`` the settings' broker.

    Returns:
        The app; its lifespan migrates the store and closes what it opened.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.home.mkdir(parents=True, exist_ok=True)  # the embedded store and broker live here
        # the thread pool that runs `def` routes and dependencies, sized with the SQL pool
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        await run_in_threadpool(_start_store, app, settings)
        own = enqueuer is None
        app.state.enqueuer = enqueuer_for(settings.resolved_broker_url) if own else enqueuer
        sweeper = asyncio.create_task(_sweep_uploads(app, settings))
        if not settings.chat.remote_url:  # this process serves chat: it runs evaluations too
            app.state.evaluations = EvaluationRunner(
                lambda: app.state.engine, app.state.chat, settings
            )
            app.state.evaluations.start()
        _freeze_startup_objects()
        try:
            yield
        finally:
            gc.unfreeze()  # what this app held can be collected once it is gone (tests make many)
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            if own:
                app.state.enqueuer.close()
            if app.state.evaluations is not None:  # hands its evaluation back first
                await run_in_threadpool(app.state.evaluations.stop)
            await run_in_threadpool(app.state.chat.close)
            app.state.engine.dispose()

    app = FastAPI(
        title="glmft",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = None
    app.state.schema_ready = False
    app.state.sse_poll_s = 0.5
    app.state.chat = ChatService(settings)  # engines load on first use
    app.state.telemetry = Telemetry(lambda: app.state.engine, app.state.chat.capacity)
    app.state.evaluations = None  # the runner, while the lifespan runs
    # no dependency_overrides: with any override set, FastAPI inspects every dependency's
    # signature again on every request; the dependencies read app.state.settings instead
    app.state.key_cache = KeyCache()
    app.state.queue_positions = QueuePositions(settings.queue_position_max_age_s)
    install_error_handlers(app)
    if settings.chat.remote_url:  # chat runs on a replica: forward it there
        app.add_middleware(ChatProxyMiddleware, remote_url=settings.chat.remote_url)
    chat_bytes = settings.chat.max_request_bytes
    chat_text = 12 * settings.chat.max_prompt_chars
    app.add_middleware(
        RequestGuardMiddleware,
        max_body_bytes=settings.limits.max_request_bytes,
        larger={"/chat": chat_bytes, "/v1/chat/completions": chat_bytes},
        streamed=("/datasets", "/v1/files"),
        # a character is at most 12 bytes of JSON (an escaped surrogate pair), plus the keys
        text_bytes=dict.fromkeys(("/chat", "/v1/chat/completions"), chat_text + 64 * 1024),
    )
    app.add_middleware(RequestContextMiddleware, telemetry=app.state.telemetry)
    app.include_router(api_router)
    install_dashboard(app)
    scopes.install(app)
    return app


@cache
def _default_app() -> FastAPI:
    return create_app()


def __getattr__(name: str) -> FastAPI:
    """``api.main:app`` for servers without ``--factory``: built on first access, not at import."""
    if name == "app":
        return _default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
