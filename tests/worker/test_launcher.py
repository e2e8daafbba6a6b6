"""The trainer command line, and TrainerProcess: GPU pinning, log file, stopping whole trees."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from ruamel.yaml import YAML

from tests.trainer.finetune_helpers import tiny_config, write_data
from trainer.contract.command import Resume, TrainerArgs, TrainerCommand
from trainer.contract.layout import EVENTS_FILE, LOG_FILE
from worker.events_tail import EventTail
from worker.launcher import (
    TrainerProcess,
    compile_cache_env,
    pid_alive,
    threads_per_rank,
)

REPO = Path(__file__).resolve().parents[2]
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}
CONVERSATIONS = [
    {
        "messages": [
            {"role": "user", "content": "类型#裙*颜色#黑色"},
            {"role": "assistant", "content": "这款黑色裙经典大方。"},
        ]
    }
]


def wait_until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_single_process_command() -> None:
    # given a one-rank launch that resumes from the newest checkpoint
    args = TrainerArgs(
        data_dir=Path("/d"),
        model_dir=Path("/m"),
        config_path=Path("/c.yaml"),
        output_dir=Path("/o"),
        resume=Resume.latest(),
        base_model_name="glm-4-9b-chat",
        feature_cache=Path("/cache"),
    )
    # when it is rendered
    command = TrainerCommand(nproc=1, args=args, python="py").argv()
    # then it is one process with the typed resume
    assert command == [
        "py", "-m", "trainer.finetune", "/d", "/m", "/c.yaml", "--resume", "latest",
        "--output-dir", "/o", "--base-model-name", "glm-4-9b-chat", "--feature-cache", "/cache",
    ]  # fmt: skip


def test_distributed_command() -> None:
    args = TrainerArgs(
        data_dir=Path("/d"),
        model_dir=Path("/m"),
        config_path=Path("/c.yaml"),
        output_dir=Path("/o"),
        base_model_name="base",
    )
    command = TrainerCommand(nproc=4, args=args).argv()
    assert command == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
        "-m", "trainer.finetune", "/d", "/m", "/c.yaml", "--resume", "none",
        "--output-dir", "/o", "--base-model-name", "base",
    ]  # fmt: skip
    with pytest.raises(ValidationError, match="nproc"):
        TrainerCommand(nproc=0, args=args)


@pytest.mark.parametrize(("gpus", "visible"), [([2, 3], "2,3"), ([], "")])
def test_gpus_pin_cuda_visible_devices_and_output_goes_to_the_log(
    tmp_path: Path, gpus: list[int], visible: str
) -> None:
    code = "import os; print('CVD=[' + os.environ['CUDA_VISIBLE_DEVICES'] + ']', os.environ['X'])"
    proc = TrainerProcess(
        [sys.executable, "-c", code], job_dir=tmp_path, gpus=gpus, env={"X": "extra"}
    )
    assert proc.wait(30) == 0
    assert proc.poll() == 0
    log = (tmp_path / LOG_FILE).read_text()
    assert f"CVD=[{visible}] extra" in log
    assert f"gpus={gpus}" in log  # the header names the run
    again = TrainerProcess([sys.executable, "-c", "raise SystemExit(3)"], job_dir=tmp_path, gpus=[])
    assert again.wait(30) == 3
    assert f"CVD=[{visible}] extra" in (tmp_path / LOG_FILE).read_text()  # appended, kept


def test_ranks_share_the_host_cores_unless_omp_num_threads_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun would give every rank OMP_NUM_THREADS=1, starving DeepSpeed's CPU Adam."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    code = "import os; print('OMP=' + os.environ.get('OMP_NUM_THREADS', 'unset'))"
    for gpus, expected in (([0, 1], threads_per_rank(2)), ([0], "unset")):
        proc = TrainerProcess([sys.executable, "-c", code], job_dir=tmp_path / str(gpus), gpus=gpus)
        assert proc.wait(30) == 0
        assert f"OMP={expected}" in (tmp_path / str(gpus) / LOG_FILE).read_text()
    pinned = TrainerProcess(
        [sys.executable, "-c", code],
        job_dir=tmp_path / "pinned",
        gpus=[0, 1],
        env={"OMP_NUM_THREADS": "3"},
    )
    assert pinned.wait(30) == 0
    assert "OMP=3" in (tmp_path / "pinned" / LOG_FILE).read_text()
    assert threads_per_rank(10_000) == 1


def test_wait_times_out_with_none(tmp_path: Path) -> None:
    proc = TrainerProcess(["sleep", "30"], job_dir=tmp_path, gpus=[])
    assert proc.wait(0.1) is None
    assert proc.poll() is None
    assert proc.terminate(grace_s=5) is not None


def test_terminate_kills_the_group_with_its_grandchildren(tmp_path: Path) -> None:
    proc = TrainerProcess(["bash", "-c", "sleep 300 & sleep 300"], job_dir=tmp_path, gpus=[])
    assert wait_until(lambda: len(proc.processes()) >= 3, 10)
    tree = proc.processes()
    assert {s.pgid for s in tree.values()} == {proc.pid}  # bash leads its own group
    assert proc.pid not in {os.getpgrp(), os.getpid()}
    started = time.monotonic()
    assert proc.terminate(grace_s=10) is not None
    assert time.monotonic() - started < 5
    assert not any(pid_alive(pid) for pid in tree)


def test_terminate_escalates_to_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    script = "trap '' TERM; sleep 300 & sleep 300"  # ignored signals stay ignored in children
    proc = TrainerProcess(["bash", "-c", script], job_dir=tmp_path, gpus=[])
    assert wait_until(lambda: len(proc.processes()) >= 3, 10)
    tree = proc.processes()
    started = time.monotonic()
    assert proc.terminate(grace_s=1) == -9
    assert 1 <= time.monotonic() - started < 6
    assert not any(pid_alive(pid) for pid in tree)


def test_terminate_reaches_children_that_left_the_group(tmp_path: Path) -> None:
    # what torchrun does: each rank gets its own session (start_new_session=True)
    code = (
        "import subprocess, time\n"
        "for _ in range(2): subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "time.sleep(300)\n"
    )
    proc = TrainerProcess([sys.executable, "-c", code], job_dir=tmp_path, gpus=[])
    assert wait_until(lambda: len(proc.processes()) >= 3, 10)
    tree = proc.processes()
    assert len({s.pgid for s in tree.values()}) == 3
    assert proc.terminate(grace_s=5) is not None
    assert not any(pid_alive(pid) for pid in tree)


def test_terminate_reaches_group_members_that_outlived_the_leader(tmp_path: Path) -> None:
    proc = TrainerProcess(["bash", "-c", "sleep 300 & exit 0"], job_dir=tmp_path, gpus=[])
    assert proc.wait(10) == 0
    left = proc.processes()
    assert len(left) == 1 and proc.pid not in left  # the orphaned `sleep`
    assert proc.terminate(grace_s=5) == 0
    assert not any(pid_alive(pid) for pid in left)
    assert proc.processes() == {}


def start_trainer(
    tmp_path: Path, model: Path, nproc: int, training_args: dict[str, Any]
) -> tuple[TrainerProcess, EventTail]:
    data = write_data(tmp_path / "data", CONVERSATIONS)
    write_data(data, CONVERSATIONS, name="dev.jsonl")
    config = tmp_path / "config.yaml"
    with config.open("w", encoding="utf-8") as fh:
        YAML(typ="safe", pure=True).dump(tiny_config("lora", training_args=training_args), fh)
    job_dir = tmp_path / "job"
    command = TrainerCommand(
        nproc=nproc,
        args=TrainerArgs(
            data_dir=data,
            model_dir=model,
            config_path=config,
            output_dir=job_dir,
            base_model_name="tiny-glm4",
        ),
    )
    proc = TrainerProcess(command.argv(), job_dir=job_dir, gpus=[], env=OFFLINE, cwd=REPO)
    return proc, EventTail(job_dir / EVENTS_FILE)


def test_a_real_trainer_run_is_tailed_while_it_runs(tmp_path: Path, tiny_model_dir: Path) -> None:
    args = {"max_steps": 4, "eval_strategy": "no", "save_steps": 1000, "logging_steps": 1}
    proc, tail = start_trainer(tmp_path, tiny_model_dir, 1, args)
    seen: list[dict[str, Any]] = []
    reads_while_running = 0
    while proc.poll() is None:
        new = tail.read_new()
        reads_while_running += bool(new)
        seen += new
        time.sleep(0.05)
    assert proc.wait(0) == 0, (tmp_path / "job" / LOG_FILE).read_text()[-3000:]
    seen += tail.read_new()
    assert reads_while_running >= 1  # events arrived before the trainer exited
    assert seen[0]["event"] == "started"
    assert [e["step"] for e in seen if e["event"] == "step"] == [1, 2, 3, 4]
    assert seen[-1]["event"] == "status" and seen[-1]["status"] == "succeeded"
    assert tail.read_new() == []
    assert tail.offset == (tmp_path / "job" / EVENTS_FILE).stat().st_size


def test_terminate_stops_every_rank_of_a_torchrun_job(tmp_path: Path, tiny_model_dir: Path) -> None:
    args = {"max_steps": 100000, "eval_strategy": "no", "save_steps": 100000, "logging_steps": 1}
    proc, tail = start_trainer(tmp_path, tiny_model_dir, 2, args)
    events: list[dict[str, Any]] = []

    def training() -> bool:
        events.extend(tail.read_new())
        return any(e["event"] == "step" for e in events) or proc.poll() is not None

    assert wait_until(training, 120)
    log = (tmp_path / "job" / LOG_FILE).read_text()
    assert proc.poll() is None, log[-3000:]
    tree = proc.processes()
    pythons = [p for p in tree if "python" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(pythons) >= 3, tree  # torchrun and two ranks
    started = time.monotonic()
    assert proc.terminate(grace_s=10) is not None
    assert time.monotonic() - started < 15
    assert not any(pid_alive(pid) for pid in tree)
    assert proc.processes() == {}


def test_trainer_dies_with_a_sigkilled_worker(tmp_path: Path) -> None:
    # given a worker process that launched a long trainer-like command
    script = (
        "import sys, time; from pathlib import Path; from worker.launcher import TrainerProcess; "
        "p = TrainerProcess(['sleep', '300'], job_dir=Path(sys.argv[1]), gpus=[]); "
        "print(p.pid, flush=True); time.sleep(300)"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert worker.stdout is not None
    child = int(worker.stdout.readline())
    assert pid_alive(child)
    # when the worker is SIGKILLed
    worker.kill()
    worker.wait(timeout=10)
    # then the trainer goes too, so a retry never runs next to it
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(child)


def test_compile_cache_is_shared_by_jobs_unless_the_worker_sets_its_own(tmp_path: Path) -> None:
    env = compile_cache_env(tmp_path / "cc", environ={})
    assert env == {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cc" / "inductor"),
        "TRITON_CACHE_DIR": str(tmp_path / "cc" / "triton"),
    }
    assert compile_cache_env(tmp_path, environ={"TRITON_CACHE_DIR": "/mine"}).keys() == {
        "TORCHINDUCTOR_CACHE_DIR"
    }
