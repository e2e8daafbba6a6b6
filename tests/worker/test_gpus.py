"""GpuLeases: disjoint GPU sets across jobs, threads and processes of one node; dead owners."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from worker.gpus import STATE_FILE, GpuLeases
from worker.launcher import pid_alive

REPO = Path(__file__).resolve().parents[2]

# Waits for a "go" file, leases one GPU, prints it, then holds it until a "stop" file appears.
HOLDER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from worker.gpus import GpuLeases
    state, job, count, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    leases = GpuLeases(state, json.loads(sys.argv[5]))
    while not go.exists():
        time.sleep(0.01)
    print(json.dumps({"job": job, "gpus": leases.acquire(job, count)}), flush=True)
    while not (state / "stop").exists():
        time.sleep(0.02)
    """
)


def holder(state: Path, job: str, gpus: list[int], count: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLDER,
            str(state),
            job,
            str(count),
            str(state / "go"),
            json.dumps(gpus),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_two_jobs_get_disjoint_gpus_and_a_third_gets_none(tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path, [0, 1])
    assert leases.capacity() == 2
    first, second = leases.acquire("job-a", 1), leases.acquire("job-b", 1)
    assert first is not None and second is not None
    assert sorted(first + second) == [0, 1]
    assert leases.acquire("job-c", 1) is None
    assert leases.held() == {"job-a": first, "job-b": second}
    assert leases.release("job-a") is True
    assert leases.release("job-a") is False
    assert leases.acquire("job-c", 1) == first
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["leases"]["job-c"]["pid"] == os.getpid()
    assert state["leases"]["job-c"]["gpus"] == first


def test_the_same_job_asking_again_keeps_its_gpus(tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path, [3, 5, 7])
    assert leases.acquire("job", 2) == [3, 5]
    assert GpuLeases(tmp_path, [3, 5, 7]).acquire("job", 2) == [3, 5]
    with pytest.raises(ValueError, match="already holds 2"):
        leases.acquire("job", 1)


def test_counts_the_node_can_never_hold_are_refused(tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path, [0, 1])
    with pytest.raises(ValueError, match="asks for 3 GPUs but this node declares only 2"):
        leases.acquire("big", 3)
    with pytest.raises(ValueError, match=">= 0"):
        leases.acquire("neg", -1)
    with pytest.raises(ValueError, match="distinct"):
        GpuLeases(tmp_path, [0, 0])


def test_cpu_jobs_ask_for_zero_gpus(tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path, [])
    assert leases.capacity() == 0
    assert leases.acquire("cpu-1", 0) == []
    assert leases.acquire("cpu-2", 0) == []
    assert leases.held() == {}
    with pytest.raises(ValueError, match="declares only 0"):
        leases.acquire("gpu", 1)


def test_waiting_acquire_gets_the_gpu_once_released(tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path, [0])
    assert leases.acquire("first", 1) == [0]
    assert leases.acquire("second", 1, wait_s=0.2) is None
    threading.Timer(0.3, leases.release, args=("first",)).start()
    started = time.monotonic()
    assert leases.acquire("second", 1, wait_s=10) == [0]
    assert time.monotonic() - started < 5


def test_threads_racing_for_gpus_get_disjoint_sets(tmp_path: Path) -> None:
    results: dict[str, list[int] | None] = {}
    barrier = threading.Barrier(8)

    def grab(job: str) -> None:
        leases = GpuLeases(tmp_path, [0, 1, 2, 3])
        barrier.wait()
        results[job] = leases.acquire(job, 1)

    threads = [threading.Thread(target=grab, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    granted = [g for gpus in results.values() if gpus for g in gpus]
    assert sorted(granted) == [0, 1, 2, 3]
    assert sum(gpus is None for gpus in results.values()) == 4


def test_processes_racing_for_gpus_get_disjoint_sets(tmp_path: Path) -> None:
    procs = [holder(tmp_path, f"p{i}", [0, 1, 2, 3]) for i in range(6)]
    try:
        time.sleep(0.3)  # let them all start and spin on the go file
        (tmp_path / "go").touch()
        answers = [json.loads(p.stdout.readline()) for p in procs if p.stdout]
        granted = {a["job"]: a["gpus"] for a in answers if a["gpus"] is not None}
        assert len(granted) == 4
        assert sorted(g for gpus in granted.values() for g in gpus) == [0, 1, 2, 3]
        assert GpuLeases(tmp_path, [0, 1, 2, 3]).held() == granted
        state = json.loads((tmp_path / STATE_FILE).read_text())["leases"]
        assert {state[job]["pid"] for job in granted} <= {p.pid for p in procs}
    finally:
        (tmp_path / "stop").touch()
        for p in procs:
            p.wait(10)


def test_a_dead_owners_lease_is_reclaimed(tmp_path: Path) -> None:
    (tmp_path / "go").touch()
    proc = holder(tmp_path, "dead-job", [0, 1], count=2)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["gpus"] == [0, 1]
    leases = GpuLeases(tmp_path, [0, 1])
    assert leases.acquire("new-job", 1) is None  # the owner is alive: its GPUs are taken
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert leases.held() == {}
    assert leases.acquire("new-job", 2) == [0, 1]


def test_an_attached_trainer_keeps_the_lease_after_its_worker_died(tmp_path: Path) -> None:
    script = (
        "import subprocess, sys; from pathlib import Path; from worker.gpus import GpuLeases\n"
        "leases = GpuLeases(Path(sys.argv[1]), [0, 1]); leases.acquire('job', 1)\n"
        "quiet = {'stdout': subprocess.DEVNULL, 'stderr': subprocess.DEVNULL}\n"
        "p = subprocess.Popen(['sleep', '60'], start_new_session=True, **quiet)\n"
        "leases.attach('job', p.pid); print(p.pid)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    trainer = int(out.stdout)
    leases = GpuLeases(tmp_path, [0, 1])
    try:
        assert leases.held() == {"job": [0]}  # worker gone, its trainer still runs on GPU 0
        assert leases.leases()["job"]["attached"][0]["pid"] == trainer
    finally:
        os.kill(trainer, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(trainer) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leases.held() == {}
    with pytest.raises(KeyError):
        leases.attach("job", os.getpid())


def test_an_unreadable_state_file_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / STATE_FILE).write_text("{broken")
    leases = GpuLeases(tmp_path, [0])
    assert leases.acquire("job", 1) == [0]
    assert "unreadable" in caplog.text
    assert json.loads((tmp_path / STATE_FILE).read_text())["leases"]["job"]["gpus"] == [0]
