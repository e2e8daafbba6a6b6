"""Engine, sessions and migrations (Alembic, run on start: ``upgrade(settings)``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session, create_engine

import core.team_models  # noqa: F401  (registers the teams tables beside core.models')
from core.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(
    url: str, *, pool_size: int | None = None, ping_idle_s: float | None = None
) -> Engine:
    """An engine for ``url``.

    Args:
        pool_size: connections kept (a server process sizes it to its threads), and 4 more
            on demand; None: SQLAlchemy's default (5, and 10 more on demand).
        ping_idle_s: PostgreSQL: test a connection before use only when it sat idle in the
            pool this long (None: before every use). A busy server then skips the round trip
            on nearly every checkout, and a connection the server dropped while idle is still
            replaced before a request sees it.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    sizing = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": 4}
    if ping_idle_s is None:
        return create_engine(url, pool_pre_ping=True, **sizing)
    engine = create_engine(url, **sizing)
    _ping_when_idle(engine, ping_idle_s)
    return engine


def _ping_when_idle(engine: Engine, idle_s: float) -> None:
    def stamp(_dbapi_connection: object, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(
        dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, _proxy: object
    ) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) <= idle_s:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # what a dead socket raises depends on the driver
            raise DisconnectionError("connection dropped while idle") from exc
        if not alive:
            raise DisconnectionError("connection dropped while idle")

    event.listen(engine, "connect", stamp)
    event.listen(engine, "checkin", stamp)
    event.listen(engine, "checkout", checkout)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` to ``revision`` (idempotent)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def prepare(
    settings: Settings, *, pool_size: int | None = None, ping_idle_s: float | None = None
) -> Engine:
    """Migrate the configured store and return an engine for it (``make_engine``'s options)."""
    upgrade(settings.resolved_database_url)
    return make_engine(settings.resolved_database_url, pool_size=pool_size, ping_idle_s=ping_idle_s)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session
