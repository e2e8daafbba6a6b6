"""The API bench's lean load generator: ``wrk`` (C, one thread, one keep-alive connection per
client, closed loop) driven by a Lua script, and CPU accounting over a server's process tree.

The Python clients cost 4-5 ms of CPU per request; on two cores that starves an API that needs
about as much. wrk costs a few hundredths of a millisecond, so the server gets the machine.

Each request of ``POST /jobs`` carries its own ``Idempotency-Key`` (``<prefix><n>``); ``GET
/jobs/{id}`` cycles over a file of ids. A phase runs for a fixed time (wrk's ``-d``); the script
prints its figures as one JSON line.

The percentiles are wrk's, after its coordinated-omission correction: for each answer slower
than a connection's mean interval between requests, wrk adds the samples an open-loop client
would have seen. A few long stalls therefore weigh more in the p99 than in a plain closed-loop
count.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from load_client import machine_cpu_s

_SCRIPT = r"""
local method = os.getenv("BENCH_METHOD")
local path = os.getenv("BENCH_PATH")
local body = os.getenv("BENCH_BODY")
local prefix = os.getenv("BENCH_KEY_PREFIX")
local ids = {}
local sent = 0

function init(args)
  local ids_file = os.getenv("BENCH_IDS")
  if ids_file and ids_file ~= "" then
    for line in io.lines(ids_file) do ids[#ids + 1] = line end
  end
end

function request()
  sent = sent + 1
  if method == "POST" then
    return wrk.format("POST", path, {["Content-Type"] = "application/json",
      ["Idempotency-Key"] = prefix .. sent}, body)
  end
  return wrk.format("GET", path .. ids[(sent % #ids) + 1])
end

function done(summary, latency, requests)
  local function p(q) return latency:percentile(q) / 1000.0 end
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_s": %.6f, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "mean_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    p(50), p(90), p(99), latency.max / 1000.0, latency.mean / 1000.0))
end
"""


def wrk_path() -> str | None:
    """The ``wrk`` binary (Debian: ``apt-get install wrk``), or None."""
    return shutil.which("wrk")


def tree_pids(root: int) -> list[int]:
    """``root`` and every process descending from it (uvicorn's workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_cpu_s(root: int) -> dict[int, float]:
    """User + system CPU seconds of each process of ``root``'s tree (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[int, float] = {}
    for pid in tree_pids(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    return cpu


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class WrkPhase:
    """One loaded phase driven by wrk."""

    name: str
    method: str
    path: str
    clients: int
    duration_s: float
    body: str = ""
    ids: list[str] | None = None
    key_prefix: str = "bench-"

    def run(self, base_url: str, server_pid: int) -> dict[str, Any]:
        """Run wrk against ``base_url``; the figures, with the CPU of ``server_pid``'s tree,
        of wrk and of the machine per request."""
        binary = wrk_path()
        if binary is None:
            raise SystemExit("wrk is not installed (apt-get install wrk)")
        with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
            script = Path(tmp) / "bench.lua"
            script.write_text(_SCRIPT)
            ids_file = ""
            if self.ids is not None:
                ids_file = str(Path(tmp) / "ids.txt")
                Path(ids_file).write_text("\n".join(self.ids) + "\n")
            env = {
                **os.environ,
                "BENCH_METHOD": self.method,
                "BENCH_PATH": self.path,
                "BENCH_BODY": self.body,
                "BENCH_KEY_PREFIX": self.key_prefix,
                "BENCH_IDS": ids_file,
            }
            command = [
                binary,
                "-t1",
                f"-c{self.clients}",
                f"-d{max(1, round(self.duration_s))}s",
                "--timeout",
                "60s",
                "-s",
                str(script),
                base_url,
            ]
            server_before = tree_cpu_s(server_pid)
            machine_before, steal_before = machine_cpu_s()
            client_before = _children_cpu_s()
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            client_after = _children_cpu_s()
            machine_after, steal_after = machine_cpu_s()
            server_after = tree_cpu_s(server_pid)
        line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
        figures = json.loads(line.removeprefix("BENCH_RESULT "))
        by_process = {
            pid: round(cpu - server_before.get(pid, 0.0), 2) for pid, cpu in server_after.items()
        }
        server_s = sum(server_after.get(p, 0.0) - c for p, c in server_before.items())
        server_s += sum(c for p, c in server_after.items() if p not in server_before)
        summary = self._summary(
            figures,
            server_s=server_s,
            client_s=client_after - client_before,
            machine_s=machine_after - machine_before,
            steal_s=steal_after - steal_before,
            processes=len(server_after),
        )
        # how evenly the worker processes shared the load (wrk's connections stay where the
        # kernel first put them)
        summary["server_cpu_s_by_process"] = {str(p): c for p, c in by_process.items() if c}
        return summary

    def _summary(
        self,
        figures: dict[str, Any],
        *,
        server_s: float,
        client_s: float,
        machine_s: float,
        steal_s: float,
        processes: int,
    ) -> dict[str, Any]:
        done = max(int(figures["requests"]), 1)
        wall = float(figures["duration_s"]) or 1e-9
        errors = sum(
            int(figures[k])
            for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
        )
        return {
            "name": self.name,
            "clients": self.clients,
            "duration_s": self.duration_s,
            "requests": int(figures["requests"]),
            "errors": errors,
            "error_kinds": {
                k: int(figures[k])
                for k in (
                    "connect_errors",
                    "read_errors",
                    "write_errors",
                    "status_errors",
                    "timeouts",
                )
            },
            "wall_s": round(wall, 3),
            "throughput_rps": round(done / wall, 1),
            "stopped_by_time_limit": False,
            "p50_ms": round(figures["p50_ms"], 2),
            "p90_ms": round(figures["p90_ms"], 2),
            "p99_ms": round(figures["p99_ms"], 2),
            "max_ms": round(figures["max_ms"], 2),
            "mean_ms": round(figures["mean_ms"], 2),
            "server_processes": processes,
            "cpu_ms_per_request": {
                "api_process": round(1000 * server_s / done, 2),
                "client_process": round(1000 * client_s / done, 2),
                "machine_total": round(1000 * machine_s / done, 2),
            },
            "cpu_cores_busy": {
                "api_process": round(server_s / wall, 2),
                "client_process": round(client_s / wall, 2),
                "machine_total": round(machine_s / wall, 2),
                "stolen_by_hypervisor": round(steal_s / wall, 2),
            },
        }
