"""Probes and metrics: ``/healthz`` (process), ``/readyz`` (database, broker), ``/metrics``."""

from __future__ import annotations

import logging

import redis
from fastapi import APIRouter, Request, Response
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import EngineDep, PrincipalDep, SettingsDep, TenantDep
from api.schemas.common import error_responses, json_error_responses
from api.schemas.system import Health
from api.telemetry import Telemetry
from core.db import upgrade
from core.errors import Unavailable
from core.settings import Settings

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])
PING_TIMEOUT_S = 1.0


@router.get("/healthz", response_model=Health, responses=error_responses())
async def healthz() -> Health:  # async: no thread, so it answers while the pool is busy
    """The process is up."""
    return Health(status="ok")


def _check_database(request: Request, engine: Engine, settings: Settings) -> str:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        if not request.app.state.schema_ready:  # the store was down at startup: migrate now
            upgrade(settings.resolved_database_url)
            request.app.state.schema_ready = True
    except (SQLAlchemyError, OSError) as exc:
        logger.warning("readyz: database check failed: %s", exc)
        return f"error: {type(exc).__name__}"
    return "ok"


def _check_broker(url: str) -> str:
    if not url.startswith(("redis://", "rediss://")):
        return "skipped"  # the embedded broker lives in the database's neighbour file
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=PING_TIMEOUT_S, socket_timeout=PING_TIMEOUT_S
        )
        with client:
            client.ping()
    except (redis.RedisError, OSError) as exc:
        logger.warning("readyz: broker check failed: %s", exc)
        return f"error: {type(exc).__name__}"
    return "ok"


@router.get("/readyz", response_model=Health, responses=error_responses(503))
def readyz(request: Request, engine: EngineDep, settings: SettingsDep) -> Health:
    """Ready to serve: the database answers (and Redis, when it is the broker)."""
    checks = {
        "database": _check_database(request, engine, settings),
        "broker": _check_broker(settings.resolved_broker_url),
    }
    if any(v.startswith("error") for v in checks.values()):
        raise Unavailable("not ready", details={"checks": checks})
    return Health(status="ready", checks=checks)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format.",
        },
        **json_error_responses(401, 403),
    },
)
def metrics(request: Request, tenant: TenantDep, principal: PrincipalDep) -> Response:
    """Prometheus metrics. With an `admin` key: requests by route and status, latency, jobs by
    state and by tenant, the chat engines; with any other key: its tenant's jobs by state."""
    telemetry: Telemetry = request.app.state.telemetry
    body = telemetry.render() if principal.allows("admin") else telemetry.render_tenant(tenant)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
