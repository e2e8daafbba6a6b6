"""The job directory's lock: one trainer at a time, and never one of a stale attempt."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability.services import REPO
from trainer.fence import DirectoryBusyError, StaleAttemptError, acquire, holders

HOLD = (
    "import pathlib, sys, time\n"
    "from trainer.fence import acquire\n"
    "acquire(pathlib.Path(sys.argv[1]), int(sys.argv[2]), wait_s=0)\n"
    "print('held', flush=True)\n"
    "time.sleep(120)\n"
)


def _holder(lock: Path, attempt: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), str(attempt)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_second_trainer_waits_for_the_holder_and_a_stale_one_never_runs(tmp_path: Path) -> None:
    lock = tmp_path / "job" / "trainer.lock"
    first = _holder(lock, 1)
    try:
        started = time.monotonic()
        with pytest.raises(DirectoryBusyError, match="attempt 1"):
            acquire(lock, 2, wait_s=1)
        assert time.monotonic() - started >= 1
    finally:
        first.kill()  # however it dies, the kernel lets the lock go
        first.wait()
    second = acquire(lock, 2, wait_s=5)
    os.close(second.fd)
    with pytest.raises(StaleAttemptError, match="attempt 2 already ran"):
        acquire(lock, 1, wait_s=0)
    assert [h["attempt"] for h in holders(lock)] == [1, 2]


def test_the_trainer_refuses_a_stale_attempt_before_writing_anything(tmp_path: Path) -> None:
    job = tmp_path / "job"
    holder = _holder(job / "trainer.lock", 2)
    holder.kill()
    holder.wait()
    command = [sys.executable, "-m", "trainer.finetune", str(job / "data"), str(job / "model")]
    command += [str(job / "config.yaml"), "--output-dir", str(job / "output")]
    command += ["--lock", str(job / "trainer.lock"), "--attempt", "1", "--lock-wait", "0"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "stale_attempt" in done.stderr
    assert not (job / "output").exists()  # not even an events.jsonl
