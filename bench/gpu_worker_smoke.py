"""The worker's GPU path on a real GPU node, without Celery or a broker.

Runs ``worker.runner.Runner`` (claim -> GPU lease -> ``CUDA_VISIBLE_DEVICES`` -> trainer ->
events into SQL -> adapter) against an SQLite store for two 1-GPU LoRA jobs on the tiny GLM-4,
concurrently when the node has two GPUs, and prints what each job got.

    python bench/gpu_worker_smoke.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from ruamel.yaml import YAML
from sqlmodel import Session, select

from core.db import make_engine, upgrade
from core.models import Dataset, Job, JobEvent
from core.settings import BaseModelEntry, Settings
from trainer.tiny import build_tiny_model
from worker.gpus import GpuLeases
from worker.runner import Runner

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "trainer" / "assets" / "demo" / "train.jsonl"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results")))
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="glmft-gpu-smoke-"))
    gpus = list(range(torch.cuda.device_count()))
    model = build_tiny_model(home / "glm-4-tiny", hidden_size=128)
    settings = Settings(
        home=home,
        models={"glm-4-tiny": BaseModelEntry(path=model)},
        worker_gpus=gpus,
        heartbeat_interval_s=1,
    )
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    jobs = [_submit(engine, i) for i in range(min(2, max(1, len(gpus))))]
    runner = Runner(settings, engine, GpuLeases(home / "leases", gpus), "gpu-smoke")
    started = time.monotonic()
    threads = [threading.Thread(target=runner.run, args=(job_id,)) for job_id in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = [_report(engine, job_id) for job_id in jobs]
    summary = {
        "device": torch.cuda.get_device_name(0) if gpus else "cpu",
        "gpus": gpus,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": round(time.monotonic() - started, 1),
        "jobs": results,
    }
    print(json.dumps(summary, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_worker_smoke.json").write_text(json.dumps(summary, indent=2))
    return 0 if all(r["state"] == "succeeded" for r in results) else 1


def _submit(engine: Any, index: int) -> str:
    config = YAML(typ="safe", pure=True).load(REPO / "configs" / "tiny" / "lora.yaml")
    config["training_args"].update(max_steps=20, save_steps=10, logging_steps=5, eval_strategy="no")
    with Session(engine, expire_on_commit=False) as session:
        dataset = Dataset(
            tenant_id="default",
            filename="train.jsonl",
            path=str(DEMO),
            bytes=DEMO.stat().st_size,
            sha256="0" * 64,
            valid=True,
        )
        session.add(dataset)
        session.commit()
        job = Job(
            tenant_id="default",
            state="queued",
            model="glm-4-tiny",
            method="lora",
            training_dataset_id=dataset.id,
            config=config,
            gpus=1,
            suffix=f"gpu{index}",
        )
        session.add(job)
        session.commit()
        return job.id


def _report(engine: Any, job_id: str) -> dict[str, Any]:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(job_id)
        events = session.exec(select(JobEvent).where(JobEvent.job_id == job_id)).all()
    started = next((e.data for e in events if e.kind == "started"), {})
    steps = [e.data for e in events if e.kind == "step"]
    return {
        "job": job_id,
        "state": job.state,
        "gpu_ids": job.gpu_ids,
        "trainer_device": started.get("device"),
        "adapter": job.adapter_id,
        "loss_first_last": [steps[0]["loss"], steps[-1]["loss"]] if steps else None,
        "error": job.error_message,
        "started_at": str(job.started_at),
        "finished_at": str(job.finished_at),
    }


if __name__ == "__main__":
    raise SystemExit(main())
