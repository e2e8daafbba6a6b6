"""The API bench's load generator: closed-loop asyncio clients, latency statistics, CPU
accounting and the app's own request-duration histogram."""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

# ---------------------------------------------------------------------------------------------
# latency and CPU


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of all cores since boot (``/proc/stat``; busy excludes steal)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    steal = values[7]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values[:7]) - idle) / tick, steal / tick


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds so far: the API process, this (client) process, the machine, stolen."""

    api: float
    client: float
    machine: float
    steal: float

    @classmethod
    def take(cls, api_pid: int) -> CpuSnapshot:
        machine, steal = machine_cpu_s()
        return cls(process_cpu_s(api_pid), self_cpu_s(), machine, steal)


# ---------------------------------------------------------------------------------------------
# load phases


@dataclass
class Load:
    """What one load phase saw."""

    name: str
    clients: int
    planned: int
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    stopped_by_time_limit: bool = False
    api_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    machine_busy_s: float = 0.0
    steal_s: float = 0.0
    app_view: dict[str, float | None] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if not code.startswith("2"))

    def summary(self) -> dict[str, Any]:
        done = max(self.done, 1)
        return {
            "name": self.name,
            "clients": self.clients,
            "planned_requests": self.planned,
            "requests": self.done,
            "errors": self.errors,
            "statuses": dict(self.statuses),
            "error_samples": self.error_samples,
            "wall_s": round(self.wall_s, 3),
            "throughput_rps": round(self.done / self.wall_s, 1) if self.wall_s else None,
            "stopped_by_time_limit": self.stopped_by_time_limit,
            **latency_summary(self.latencies),
            "cpu_ms_per_request": {
                "api_process": round(1000 * self.api_cpu_s / done, 2),
                "client_process": round(1000 * self.client_cpu_s / done, 2),
                "machine_total": round(1000 * self.machine_busy_s / done, 2),
            },
            "cpu_cores_busy": {
                "api_process": round(self.api_cpu_s / self.wall_s, 2) if self.wall_s else None,
                "client_process": round(self.client_cpu_s / self.wall_s, 2)
                if self.wall_s
                else None,
                "machine_total": round(self.machine_busy_s / self.wall_s, 2)
                if self.wall_s
                else None,
                "stolen_by_hypervisor": round(self.steal_s / self.wall_s, 2)
                if self.wall_s
                else None,
            },
            "app_view": self.app_view,
        }


def scrape_histogram(base_url: str, method: str, route: str) -> dict[str, float]:
    """The app's request-duration histogram of one route: count, sum and cumulative buckets."""
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "glmft_http_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("method") != method or sample.labels.get("route") != route:
                continue
            if sample.name.endswith("_count"):
                found["count"] = sample.value
            elif sample.name.endswith("_sum"):
                found["sum"] = sample.value
            elif sample.name.endswith("_bucket"):
                found[f"le_{sample.labels['le']}"] = sample.value
    return found


def app_view(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Mean time inside the app and the share of requests the app finished within 50 ms."""
    count = after.get("count", 0) - before.get("count", 0)
    if count <= 0:
        return {"requests": 0, "mean_ms": None, "share_le_50ms": None}
    total = after.get("sum", 0) - before.get("sum", 0)
    within = after.get("le_0.05", 0) - before.get("le_0.05", 0)
    return {
        "requests": count,
        "mean_ms": round(1000 * total / count, 2),
        "share_le_50ms": round(within / count, 4),
    }


RequestFn = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


async def drive(
    load: Load, base_url: str, api_pid: int, request: RequestFn, time_limit: float
) -> None:
    """``load.clients`` closed-loop clients share ``load.planned`` requests (or the time limit).

    Only the requests are measured: building the clients and opening their connections is not.
    """
    counter = iter(range(load.planned))
    clients = [
        httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(60.0))
        for _ in range(load.clients)
    ]
    try:
        # open every connection first, so the measured requests do not pay for it
        await asyncio.gather(*(c.get("/healthz") for c in clients))
        deadline = time.perf_counter() + time_limit

        async def client_loop(client: httpx.AsyncClient) -> None:
            for index in counter:
                if time.perf_counter() > deadline:
                    load.stopped_by_time_limit = True
                    return
                started = time.perf_counter()
                try:
                    response = await request(client, index)
                except httpx.HTTPError as exc:
                    load.latencies.append(time.perf_counter() - started)
                    load.statuses[type(exc).__name__] += 1
                    if len(load.error_samples) < 5:
                        load.error_samples.append(f"{type(exc).__name__}: {exc}")
                    continue
                load.latencies.append(time.perf_counter() - started)
                load.statuses[str(response.status_code)] += 1
                if not response.is_success and len(load.error_samples) < 5:
                    load.error_samples.append(f"{response.status_code}: {response.text[:300]}")

        before = CpuSnapshot.take(api_pid)
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(c) for c in clients))
        load.wall_s = time.perf_counter() - started
        after = CpuSnapshot.take(api_pid)
        load.api_cpu_s = after.api - before.api
        load.client_cpu_s = after.client - before.client
        load.machine_busy_s = after.machine - before.machine
        load.steal_s = after.steal - before.steal
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


def run_load(
    *,
    name: str,
    base_url: str,
    api_pid: int,
    clients: int,
    requests: int,
    time_limit: float,
    request: RequestFn,
    route: tuple[str, str],
) -> Load:
    load = Load(name=name, clients=clients, planned=requests)
    before_hist = scrape_histogram(base_url, *route)
    asyncio.run(drive(load, base_url, api_pid, request, time_limit))
    load.app_view = app_view(before_hist, scrape_histogram(base_url, *route))
    s = load.summary()
    print(
        f"  {name}: {s['requests']} requests, {s['errors']} errors, {s['throughput_rps']} req/s,"
        f" p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, max {s['max_ms']} ms",
        flush=True,
    )
    return load
