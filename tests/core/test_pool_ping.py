"""The API's SQL pool tests a connection only after it sat idle (``make_engine(ping_idle_s=)``):
a connection the server dropped while idle is replaced before anyone uses it, and a connection
in steady use is handed out without the extra round trip."""

from __future__ import annotations

import time

from sqlalchemy import Engine, text

from core.db import make_engine


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _kill(url: str, pid: int) -> None:
    admin = make_engine(url)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            conn.commit()
    finally:
        admin.dispose()


def test_a_connection_dropped_while_idle_is_replaced(postgres_url: str) -> None:
    engine = make_engine(postgres_url, pool_size=1, ping_idle_s=0.05)
    try:
        first = _backend_pid(engine)
        _kill(postgres_url, first)
        time.sleep(0.2)  # idle past ping_idle_s: the next checkout tests it
        assert _backend_pid(engine) != first  # answered, by a fresh connection
    finally:
        engine.dispose()


def _count_pings(engine: Engine) -> list[int]:
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(1)
        return bool(ping(dbapi_connection))  # type: ignore[arg-type]

    engine.dialect.do_ping = counted  # type: ignore[method-assign]
    return pings


def test_a_connection_in_use_is_not_pinged(postgres_url: str) -> None:
    engine = make_engine(postgres_url, pool_size=1, ping_idle_s=60.0)
    try:
        _backend_pid(engine)  # the connection exists and went back to the pool
        pings = _count_pings(engine)
        for _ in range(5):
            _backend_pid(engine)
        assert pings == []
    finally:
        engine.dispose()


def test_an_idle_connection_is_pinged(postgres_url: str) -> None:
    engine = make_engine(postgres_url, pool_size=1, ping_idle_s=0.05)
    try:
        _backend_pid(engine)
        pings = _count_pings(engine)
        time.sleep(0.2)
        _backend_pid(engine)
        assert pings == [1]
    finally:
        engine.dispose()
