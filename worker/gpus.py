"""Node-local GPU leases: each job gets a disjoint set of the GPUs this node declares.

Every worker process on a node shares one ``state_dir`` (node-local disk, one PID namespace).
The state is a JSON file guarded by an ``fcntl.flock`` on a lock file, so leases are disjoint
across threads and processes. Each lease records the owner's pid (and its start time, so that a
recycled pid does not keep a lease alive); processes attached with ``attach()`` (the trainer)
keep the lease too. A lease none of whose processes is alive any more is reclaimed.

``acquire(job, 0)`` is a CPU job: it returns ``[]`` at once and records nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from worker.launcher import pid_alive, proc_stat

logger = logging.getLogger(__name__)

STATE_FILE = "gpu-leases.json"
LOCK_FILE = "gpu-leases.lock"

Lease = dict[str, Any]  # {"gpus": [..], "pid": int, "start_ticks": int | None, ...}


def _owner(pid: int) -> dict[str, Any]:
    stat = proc_stat(pid)
    return {"pid": pid, "start_ticks": stat.start_ticks if stat else None}


def _lease_alive(lease: Lease) -> bool:
    owners = [lease, *lease.get("attached", [])]
    return any(pid_alive(int(o["pid"]), o.get("start_ticks")) for o in owners)


class GpuLeases:
    """Disjoint GPU sets for concurrent jobs on one node.

    ``gpus`` are the device ids the node declares (``CUDA_VISIBLE_DEVICES`` numbering, e.g.
    ``[0, 1, 2, 3]``; ``[]`` for a CPU-only node).
    """

    def __init__(self, state_dir: Path, gpus: Sequence[int]) -> None:
        if len(set(gpus)) != len(gpus) or any(g < 0 for g in gpus):
            raise ValueError(f"GPU ids must be distinct non-negative integers, got {list(gpus)}")
        self.state_dir = state_dir
        self.gpus = sorted(gpus)
        state_dir.mkdir(parents=True, exist_ok=True)
        self._state_path = state_dir / STATE_FILE
        self._lock_path = state_dir / LOCK_FILE

    def capacity(self) -> int:
        """How many GPUs this node declares: the largest ``count`` a job can ever get."""
        return len(self.gpus)

    def acquire(self, job_id: str, count: int, *, wait_s: float = 0.0) -> list[int] | None:
        """Lease ``count`` free GPUs to ``job_id`` for the calling process; None when busy.

        ``wait_s`` > 0 retries until that many seconds have passed. Asking again for a job this
        process already holds returns the same GPUs. Raises ValueError when ``count`` is negative
        or more than the node has: such a job could never run here.
        """
        if count < 0:
            raise ValueError(f"GPU count must be >= 0, got {count}")
        if count > self.capacity():
            raise ValueError(
                f"job {job_id} asks for {count} GPUs but this node declares only "
                f"{self.capacity()} ({self.gpus})"
            )
        if count == 0:
            return []
        deadline = time.monotonic() + wait_s
        while True:
            granted = self._try_acquire(job_id, count)
            if granted is not None or time.monotonic() >= deadline:
                return granted
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def _try_acquire(self, job_id: str, count: int) -> list[int] | None:
        me = os.getpid()
        with self._locked() as leases:
            existing = leases.get(job_id)
            if existing is not None:
                if existing["pid"] != me:  # alive (dead ones were reclaimed): another worker
                    logger.warning("job %s already holds GPUs in pid %s", job_id, existing["pid"])
                    return None
                if len(existing["gpus"]) != count:
                    raise ValueError(
                        f"job {job_id} already holds {len(existing['gpus'])} GPUs, not {count}"
                    )
                return list(existing["gpus"])
            taken = {g for lease in leases.values() for g in lease["gpus"]}
            free = [g for g in self.gpus if g not in taken]
            if len(free) < count:
                return None
            granted = free[:count]
            leases[job_id] = {
                "gpus": granted,
                **_owner(me),
                "host": socket.gethostname(),
                "acquired_at": round(time.time(), 3),
                "attached": [],
            }
            return granted

    def attach(self, job_id: str, pid: int) -> None:
        """Let process ``pid`` (the launched trainer) keep ``job_id``'s lease alive as well.

        If the worker dies while its trainer runs on, the GPUs stay leased until the trainer is
        gone too. Raises KeyError when the job holds no lease.
        """
        with self._locked() as leases:
            if job_id not in leases:
                raise KeyError(f"job {job_id} holds no GPU lease")
            leases[job_id].setdefault("attached", []).append(_owner(pid))

    def release(self, job_id: str) -> bool:
        """Give ``job_id``'s GPUs back; False when it held none."""
        with self._locked() as leases:
            return leases.pop(job_id, None) is not None

    def free(self) -> int:
        """How many of this node's GPUs no live lease holds now."""
        return self.capacity() - sum(len(gpus) for gpus in self.held().values())

    def held(self) -> dict[str, list[int]]:
        """Live leases: job id -> GPU ids (dead owners' leases are reclaimed first)."""
        with self._locked() as leases:
            return {job: list(lease["gpus"]) for job, lease in leases.items()}

    def leases(self) -> dict[str, Lease]:
        """Live leases with their owner pids and times, for diagnostics."""
        with self._locked() as leases:
            copy: dict[str, Lease] = json.loads(json.dumps(leases))
            return copy

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Lease]]:
        """Hold the node lock; yields the live leases and writes them back on success."""
        with self._lock_path.open("a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                leases = self._load()
                for job in [j for j, lease in leases.items() if not _lease_alive(lease)]:
                    logger.warning("reclaiming GPUs %s of job %s: owner gone", leases[job], job)
                    del leases[job]
                before = json.dumps(leases, sort_keys=True)
                yield leases
                if json.dumps(leases, sort_keys=True) != before or not self._state_path.exists():
                    self._save(leases)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _load(self) -> dict[str, Lease]:
        try:
            data = json.loads(self._state_path.read_text(encoding="utf-8"))
            leases = data["leases"]
            if not isinstance(leases, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("gpus"), list) and "pid" in v
                for v in leases.values()
            ):
                raise TypeError("leases must map job ids to {gpus, pid}")
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError) as exc:
            logger.error(
                "GPU lease state %s is unreadable (%s): starting empty", self._state_path, exc
            )
            return {}
        return leases

    def _save(self, leases: dict[str, Lease]) -> None:
        tmp = self._state_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"version": 1, "leases": leases}, indent=1), encoding="utf-8")
        os.replace(tmp, self._state_path)
