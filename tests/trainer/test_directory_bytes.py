"""``trainer.checkpoints.directory_bytes`` (the worker's disk limit, a checkpoint's size) counts
a job directory while the trainer writes and rotates checkpoints in it."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from trainer.checkpoints import directory_bytes


def test_counts_files_and_survives_checkpoints_removed_during_the_walk(tmp_path: Path) -> None:
    # given a job directory with a fixed part and checkpoints that come and go, as the
    # trainer's save_total_limit rotation makes them
    (tmp_path / "events.jsonl").write_bytes(b"x" * 1000)
    output = tmp_path / "output"
    output.mkdir()
    stop = threading.Event()

    def rotate() -> None:
        step = 0
        while not stop.is_set():
            step += 1
            checkpoint = output / f"checkpoint-{step}" / "nested"
            checkpoint.mkdir(parents=True)
            for i in range(20):
                (checkpoint / f"shard-{i}.bin").write_bytes(b"y" * 10)
            shutil.rmtree(output / f"checkpoint-{step - 1}", ignore_errors=True)

    rotator = threading.Thread(target=rotate)
    rotator.start()
    try:
        # then every count while it happens succeeds and holds at least the fixed part
        sizes = [directory_bytes(tmp_path) for _ in range(300)]
    finally:
        stop.set()
        rotator.join()
    assert min(sizes) >= 1000
    assert max(sizes) <= 1000 + 2 * 200  # at most two checkpoints of 200 bytes at a time
    shutil.rmtree(output)
    assert directory_bytes(tmp_path) == 1000
