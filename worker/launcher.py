"""Launch the trainer as a subprocess in its own session and stop it, children included.

``TrainerProcess`` starts a command (``trainer.contract.command.TrainerCommand``'s argv) with
``CUDA_VISIBLE_DEVICES`` set from the GPU lease, output appended to ``trainer.log`` in the job dir,
and ``terminate()`` stops the whole process tree. torchrun starts each rank with
``start_new_session=True``, so the ranks are *not* in torchrun's process group: ``terminate()``
therefore signals every process group found in the descendant tree (read from ``/proc`` on Linux),
not only the leader's group.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainer.contract.layout import LOG_FILE

logger = logging.getLogger(__name__)

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the worker needs."""

    pid: int
    ppid: int
    pgid: int
    state: str
    start_ticks: int  # clock ticks after boot: (pid, start_ticks) names one process for good

    @property
    def alive(self) -> bool:
        """False for zombies (exited, not yet reaped) and dead entries."""
        return self.state not in ("Z", "X", "x")


def proc_stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed, or None when the process is gone or there is no ``/proc``."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parentheses
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return ProcStat(pid, int(fields[1]), int(fields[2]), fields[0], int(fields[19]))
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` runs (a zombie does not), and is still the process started at
    ``start_ticks`` when that is given (guards against a recycled pid)."""
    if pid <= 0:
        return False
    stat = proc_stat(pid)
    if stat is not None:
        return stat.alive and (start_ticks is None or stat.start_ticks == start_ticks)
    if _PROC.is_dir():  # Linux, and the pid has no entry
        return False
    try:  # no /proc: ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the worker that launched us dies (Linux).

    A SIGKILLed worker must not leave a trainer running: the reaper re-queues the job, and a
    second trainer on the same job directory would break "a job never runs twice at once".
    torchrun passes the SIGTERM on to its ranks.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _all_processes() -> list[ProcStat]:
    stats = []
    with contextlib.suppress(OSError):
        for entry in _PROC.iterdir():
            if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) is not None:
                stats.append(stat)
    return stats


def process_tree(roots: Iterable[int], groups: Iterable[int] = ()) -> dict[int, ProcStat]:
    """Living processes that are in ``roots``, in one of the process ``groups``, or descend
    from one of those (ranks that left their launcher's group by ``setsid`` included)."""
    stats = [s for s in _all_processes() if s.alive]
    children: dict[int, list[ProcStat]] = {}
    for stat in stats:
        children.setdefault(stat.ppid, []).append(stat)
    root_set, group_set = set(roots), set(groups)
    tree = {s.pid: s for s in stats if s.pid in root_set or s.pgid in group_set}
    todo = list(tree)
    while todo:
        for child in children.get(todo.pop(), []):
            if child.pid not in tree:
                tree[child.pid] = child
                todo.append(child.pid)
    return tree


def compile_cache_env(root: Path, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Where the trainer's ``torch.compile`` keeps its kernels, shared by the jobs of this host:
    with a warm cache the compile before the first step takes seconds instead of about a
    minute. Variables the worker's own environment sets are left alone."""
    wanted = {"TORCHINDUCTOR_CACHE_DIR": root / "inductor", "TRITON_CACHE_DIR": root / "triton"}
    return {key: str(path) for key, path in wanted.items() if key not in environ}


def threads_per_rank(ranks: int) -> int:
    """CPU threads each of ``ranks`` trainer processes may use. torchrun sets
    ``OMP_NUM_THREADS=1`` when it is unset, which makes DeepSpeed's CPU Adam (optimizer offload)
    several times slower; the launcher shares the host's cores between the ranks instead."""
    return max(1, (os.cpu_count() or 1) // max(1, ranks))


class TrainerProcess:
    """A trainer command running in its own session, pinned to leased GPUs.

    Output (stdout and stderr) is appended to the job directory's ``trainer.log``. ``env``
    entries are added to the current environment; ``CUDA_VISIBLE_DEVICES`` always comes from
    ``gpus`` (an empty string for a CPU job), with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` unless
    ``env`` says otherwise, so lease ids match ``nvidia-smi``'s numbering.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        job_dir: Path,
        gpus: Sequence[int],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.command = list(command)
        self.gpus = list(gpus)
        self.log_path = job_dir / LOG_FILE
        job_dir.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        if len(self.gpus) > 1:
            full_env.setdefault("OMP_NUM_THREADS", str(threads_per_rank(len(self.gpus))))
        full_env.update(env or {})
        full_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in self.gpus)
        with self.log_path.open("ab") as log:
            header = f"=== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} gpus={self.gpus} "
            log.write((header + shlex.join(self.command) + "\n").encode())
            log.flush()
            self._popen = subprocess.Popen(  # noqa: S603 - our own command list, no shell
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._tree: dict[int, ProcStat] = {}
        leader = proc_stat(self._popen.pid)  # forked already: its start time is the child's
        self._leader_ticks = leader.start_ticks if leader else None

    @property
    def pid(self) -> int:
        """The leader's pid, which is also its process group and session id."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The leader's exit status (negative: killed by that signal), None while it runs."""
        return self._popen.returncode

    def poll(self) -> int | None:
        """The exit status if the leader has exited, else None."""
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds (None: forever); the exit status, or None on timeout."""
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def processes(self) -> dict[int, ProcStat]:
        """Living processes of this run: the leader, its group, their descendants.

        Remembered between calls, so ranks orphaned by a dead launcher are still found (call it
        while the run is healthy, as ``terminate()`` does before it signals anything).
        """
        self._popen.poll()  # reap the leader so that it does not linger as a zombie
        if not _PROC.is_dir():  # no /proc: the leader's process group is all we can see
            return {} if self._group_gone() else {self.pid: ProcStat(self.pid, 0, self.pid, "R", 0)}
        own = os.getpgrp()
        roots = {p for p, s in self._tree.items() if pid_alive(p, s.start_ticks)}
        if self._popen.returncode is None:
            roots.add(self.pid)
        groups = {self._tree[p].pgid for p in roots if p in self._tree}
        if self._leader_group_is_ours():  # members may outlive the leader (bash's `&` jobs)
            groups.add(self.pid)
        self._tree = process_tree(roots, groups - {own})
        return dict(self._tree)

    def _leader_group_is_ours(self) -> bool:
        """A group id outlives its leader while it has members, and cannot be reused until it
        has none; a *different* process with the leader's pid means that the id was recycled."""
        stat = proc_stat(self.pid)
        return stat is None or stat.start_ticks == self._leader_ticks

    def _group_gone(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def terminate(self, grace_s: float = 10) -> int | None:
        """Stop the run: SIGTERM to every process group of the tree, SIGKILL after ``grace_s``.

        Returns the leader's exit status (None only if it survived SIGKILL, which is logged).
        """
        deadline = time.monotonic() + grace_s
        self._signal_all(signal.SIGTERM)
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.processes():
            logger.warning("trainer %s ignored SIGTERM for %.1fs: SIGKILL", self.pid, grace_s)
            self._signal_all(signal.SIGKILL)
            end = time.monotonic() + 5
            while self.processes() and time.monotonic() < end:
                time.sleep(0.05)
        left = self.processes()
        if left:
            logger.error("trainer %s: processes survived SIGKILL: %s", self.pid, sorted(left))
        return self.wait(0 if left else 5)

    def _signal_all(self, sig: signal.Signals) -> None:
        tree = self.processes()
        own = os.getpgrp()
        groups = {s.pgid for s in tree.values()}  # never a bare pid: it may be recycled
        for pgid in groups - {own}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        for pid, stat in tree.items():  # a descendant that joined our own group
            if stat.pgid == own:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
