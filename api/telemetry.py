"""Prometheus metrics of one app: requests by route and status, latency, jobs by state, and
the chat engines' cache and rows.

Each app owns its registry (tests build many apps in one process); ``GET /metrics`` renders it.
Under several uvicorn worker processes, ``PROMETHEUS_MULTIPROC_DIR`` (set before the workers
start: ``glmft up`` and the deploy files do) makes every worker write its request counts there,
and a scrape answered by any worker sums them all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import ClassVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from core.jobs import JobState
from core.models import Job

logger = logging.getLogger(__name__)

#: prometheus_client's switch to its multi-process mode (read when it is imported)
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class JobStateCollector(Collector):
    """``glmft_jobs{state}``: counted in SQL at scrape time, so every API replica agrees. With
    ``tenant``, that tenant's jobs only; without, every job, and ``glmft_tenant_jobs{tenant,
    state}`` beside it."""

    def __init__(self, engine: Callable[[], Engine | None], tenant: str | None = None) -> None:
        self._engine = engine
        self._tenant = tenant

    def collect(self) -> Iterator[Metric]:
        """Yield the gauge families (nothing when the database cannot be read)."""
        engine = self._engine()
        if engine is None:
            return
        statement = select(col(Job.tenant_id), col(Job.state), func.count()).group_by(
            col(Job.tenant_id), col(Job.state)
        )
        if self._tenant is not None:
            statement = statement.where(col(Job.tenant_id) == self._tenant)
        try:
            with Session(engine) as session:
                rows = [(str(t), str(s), int(n)) for t, s, n in session.execute(statement)]
        except SQLAlchemyError:
            logger.warning("jobs gauge: database unavailable", exc_info=True)
            return
        family = GaugeMetricFamily("glmft_jobs", "Jobs by state", labels=["state"])
        for state in JobState:
            family.add_metric([state.value], sum(n for _, s, n in rows if s == state.value))
        yield family
        if self._tenant is None:
            tenants = GaugeMetricFamily(
                "glmft_tenant_jobs", "Jobs by tenant and state", labels=["tenant", "state"]
            )
            for tenant, kind, count in sorted(rows):
                tenants.add_metric([tenant, kind], count)
            yield tenants


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
        shared = os.environ.get(MULTIPROCESS_DIR_ENV)
        if shared:  # each worker may be first: creating it twice is no error
            os.makedirs(shared, exist_ok=True)
        self.registry = CollectorRegistry()
        self._engine = engine
        self._chat_capacity = chat_capacity
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
        """The Prometheus text exposition of everything in the registry; in the multi-process
        mode, the request metrics of every worker process."""
        shared = os.environ.get(MULTIPROCESS_DIR_ENV)
        if not shared:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=shared)
        registry.register(JobStateCollector(self._engine))
        registry.register(ChatEngineCollector(self._chat_capacity))
        return generate_latest(registry)

    def render_tenant(self, tenant: str) -> bytes:
        """What one tenant may see: its own jobs by state."""
        registry = CollectorRegistry()
        registry.register(JobStateCollector(self._engine, tenant))
        return generate_latest(registry)
