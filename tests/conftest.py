"""Fixtures every test folder shares: the tiny GLM-4, throw-away PostgreSQL databases and a
migrated store on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from sqlalchemy import Engine

if TYPE_CHECKING:
    from tests.live_service import LiveService

# Nothing may reach the network; set before transformers is imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(autouse=True)
def _cli_logging_removed() -> Iterator[None]:
    """A CLI run in-process (``main(argv)``) gives the root logger a stream handler bound to that
    test's captured stderr; remove it after the test, so that a later test's records (with
    ``CI=true`` transformers propagates its own to the root) never reach a closed stream."""
    root = logging.getLogger()
    before = set(root.handlers)
    yield
    for handler in root.handlers[:]:
        if type(handler) is logging.StreamHandler and handler not in before:
            root.removeHandler(handler)


@contextmanager
def postgres_database(prefix: str = "glmft_test") -> Iterator[str]:
    """A new, empty database on the local PostgreSQL, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL database for the whole session."""
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated store: a SQLite file, then the session's PostgreSQL database (emptied after)."""
    from core.db import make_engine, upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    engine = make_engine(url)
    yield engine
    if request.param == "postgresql":
        with engine.begin() as conn:
            for table in (
                "webhook_attempts",
                "webhook_deliveries",
                "webhooks",
                "api_keys",
                "tenants",
                "evaluation_events",
                "evaluation_outputs",
                "evaluation_samples",
                "evaluations",
                "adapters",
                "checkpoints",
                "metrics",
                "job_events",
                "jobs",
                "datasets",
                "base_models",
            ):
                conn.exec_driver_sql(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
    engine.dispose()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ``GlmForCausalLM`` + GLM-4 tokenizer (hidden 64, 2 layers), built once, offline.

    Shared by the whole session: treat it as read-only (copy it before modifying anything).
    """
    from trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_glm4"), seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    """The tokenizer of ``tiny_model_dir``, loaded with ``AutoTokenizer`` (do not mutate)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def chat_adapters(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    """Two LoRA adapters and a P-Tuning v2 one with known answers (``tests.chat_adapters``)."""
    from tests.chat_adapters import train_chat_adapters

    return train_chat_adapters(tmp_path_factory.mktemp("chat_adapters"), tiny_model_dir)


@pytest.fixture(scope="session")
def live_service(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[LiveService]:
    """The API under uvicorn and a real Celery worker (``tests.live_service``), started once
    and shared by the SDK, CLI and OpenAI-compatibility tests."""
    from tests.live_service import run_live_service

    with run_live_service(tmp_path_factory.mktemp("live_service"), tiny_model_dir) as service:
        yield service


@pytest.fixture(scope="session")
def tiny_vision_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ``Glm4vForConditionalGeneration`` with its tokenizer and image processor (hidden
    64, 2 layers, a one-block vision tower), built once, offline; treat it as read-only."""
    from trainer.tiny_vision import build_tiny_vision_model

    return build_tiny_vision_model(tmp_path_factory.mktemp("tiny_glm4v"), seed=0)
