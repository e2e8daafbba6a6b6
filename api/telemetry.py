"""Prometheus metrics of one app: requests by route and status, latency, jobs by state, and
the chat engines' cache and rows.

Each app owns its registry (tests build many apps in one process); ``GET /metrics`` renders it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import ClassVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from core.jobs import JobState
from core.models import Job

logger = logging.getLogger(__name__)


class JobStateCollector(Collector):
    """``glmft_jobs{state}``: counted in SQL at scrape time, so every API replica agrees."""

    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        """Yield the gauge family (nothing when the database cannot be read)."""
        engine = self._engine()
        if engine is None:
            return
        family = GaugeMetricFamily("glmft_jobs", "Jobs by state", labels=["state"])
        try:
            with Session(engine) as session:
                rows = session.execute(
                    select(col(Job.state), func.count()).group_by(col(Job.state))
                )
                counts = {str(state): int(n) for state, n in rows}
        except SQLAlchemyError:
            logger.warning("jobs gauge: database unavailable", exc_info=True)
            return
        for state in JobState:
            family.add_metric([state.value], counts.get(state.value, 0))
        yield family


class ChatEngineCollector(Collector):
    """``glmft_chat_*{model}``: the key/value cache and rows of each engine this process runs
    (nothing while it serves no chat)."""

    GAUGES: ClassVar[dict[str, str]] = {
        "cache_tokens": "Tokens the engine's key/value cache holds in all",
        "free_cache_tokens": "Tokens of the cache not held by a row",
        "running": "Rows being decoded",
        "waiting": "Requests waiting to be admitted",
    }

    def __init__(self, capacity: Callable[[], dict[str, dict[str, int]]]) -> None:
        self._capacity = capacity

    def collect(self) -> Iterator[Metric]:
        """Yield one gauge family per measure, a sample per loaded model."""
        engines = self._capacity()
        for name, help_text in self.GAUGES.items():
            family = GaugeMetricFamily(f"glmft_chat_{name}", help_text, labels=["model"])
            for model, figures in engines.items():
                family.add_metric([model], figures.get(name, 0))
            yield family


class Telemetry:
    """The app's metrics registry and request instruments."""

    def __init__(
        self,
        engine: Callable[[], Engine | None],
        chat_capacity: Callable[[], dict[str, dict[str, int]]] = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "glmft_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "glmft_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(JobStateCollector(engine))
        self.registry.register(ChatEngineCollector(chat_capacity))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything in the registry."""
        return generate_latest(self.registry)
