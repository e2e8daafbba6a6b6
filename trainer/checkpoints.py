"""Checkpoint discovery, completeness and where a resume starts (glm4-reference.md §1.1, §7.18).

A checkpoint directory ``checkpoint-N`` is *complete* once glmft has written its metadata file
(``glmft_checkpoint.json``) into it, which happens after Hugging Face has written the weights,
optimizer, RNG and trainer state. A directory without it (a crash mid-save) is never resumed from.
The metadata also names the base model by its registry name, so a server can resolve the base
later without trusting the machine path baked into ``adapter_config.json``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from trainer.contract.command import Resume

METADATA_FILE = "glmft_checkpoint.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointNotFoundError(FileNotFoundError):
    """The checkpoint asked to resume from does not exist or is incomplete."""


def list_checkpoints(output_dir: Path) -> dict[int, Path]:
    """All ``checkpoint-N`` directories in ``output_dir``, complete or not, by step."""
    if not output_dir.is_dir():
        return {}
    found: dict[int, Path] = {}
    for entry in output_dir.iterdir():
        match = _CHECKPOINT_RE.match(entry.name)
        if match and entry.is_dir():
            found[int(match.group(1))] = entry
    return found


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / METADATA_FILE).is_file() and (checkpoint / "trainer_state.json").is_file()


def latest_complete(output_dir: Path) -> Path | None:
    for step in sorted(list_checkpoints(output_dir), reverse=True):
        path = output_dir / f"checkpoint-{step}"
        if is_complete(path):
            return path
    return None


def resolve_resume(resume: Resume, output_dir: Path) -> Path | None:
    """The checkpoint directory to resume from, or ``None`` to train from scratch."""
    if resume.mode == "none":
        return None
    if resume.mode == "latest":
        return latest_complete(output_dir)
    path = output_dir / f"checkpoint-{resume.at}"
    if not path.is_dir():
        have = sorted(list_checkpoints(output_dir))
        raise CheckpointNotFoundError(
            f"checkpoint {resume.at} not found in {output_dir} (have: {have or 'none'})"
        )
    if not is_complete(path):
        raise CheckpointNotFoundError(f"checkpoint {resume.at} in {output_dir} is incomplete")
    return path


def write_metadata(checkpoint: Path, metadata: dict[str, Any]) -> None:
    """Mark ``checkpoint`` complete; written last, atomically."""
    tmp = checkpoint / (METADATA_FILE + ".tmp")
    tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(checkpoint / METADATA_FILE)


def read_metadata(checkpoint: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((checkpoint / METADATA_FILE).read_text(encoding="utf-8"))
    return data


def directory_bytes(path: Path) -> int:
    """Bytes of the files under ``path``, while another process may be writing and removing
    them (the trainer rotating checkpoints): what vanishes during the walk is not counted."""
    total = 0
    for root, _dirs, files in os.walk(path):  # a folder removed meanwhile is passed over
        for name in files:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total
