"""The job directory: every file name API, worker and trainer use for one job's run.

``<artifact_root>/jobs/<job_id>/``::

    data/train.jsonl, data/dev.jsonl   copies of the job's datasets (immutable inputs); for a
                                       dataset archive its whole tree (images beside the
                                       files that name them, by relative path), hard-linked
    config.yaml                        the run config as admitted (trainer.contract.run_config)
    output/events.jsonl                the trainer's events (trainer.contract.events)
    output/checkpoint-N/               the trainer's checkpoints
    trainer.log                        the trainer's stdout and stderr
    trainer.lock                       held by the running trainer; one line per attempt that
                                       ran (trainer.fence): never two trainers at once
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

JOBS_DIR = "jobs"
DATA_DIR = "data"
OUTPUT_DIR = "output"
CONFIG_FILE = "config.yaml"
LOG_FILE = "trainer.log"
LOCK_FILE = "trainer.lock"
EVENTS_FILE = "events.jsonl"
#: the data files of ``data/``, as the run config names them
TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "dev.jsonl"


@dataclass(frozen=True)
class JobDir:
    """One job's directory; every path of the layout above."""

    root: Path

    @classmethod
    def for_job(cls, artifact_root: Path, job_id: str) -> JobDir:
        return cls(artifact_root / JOBS_DIR / job_id)

    @property
    def data(self) -> Path:
        return self.root / DATA_DIR

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def output(self) -> Path:
        return self.root / OUTPUT_DIR

    @property
    def events(self) -> Path:
        return self.output / EVENTS_FILE

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    def contains(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root.resolve())
