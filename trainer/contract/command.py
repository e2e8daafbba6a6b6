"""The trainer's command line: typed on both sides, rendered by the worker, parsed by the trainer.

``TrainerCommand(...).argv()`` is what the worker launches; ``TrainerArgs.parse(argv)`` (through
:func:`add_arguments`, which ``python -m trainer.finetune`` and ``glmft finetune`` share) is what
the trainer runs, so ``TrainerArgs.parse(args.argv()) == args``. Resume is :class:`Resume`:
``Resume.none()``, ``Resume.latest()`` or ``Resume.step(N)``, passed as ``--resume
none|latest|step:N``. The upstream demo's positional ``yes|no|N`` stays accepted for people
running the trainer by hand.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_UPSTREAM_NO = ("", "no", "false")
_UPSTREAM_YES = ("yes", "true", "auto")


class Resume(BaseModel):
    """Where a run starts: from scratch, the newest complete checkpoint, or checkpoint ``N``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["none", "latest", "step"]
    at: int | None = Field(default=None, gt=0, description="the checkpoint's step (mode step)")

    @model_validator(mode="after")
    def _step_needs_at(self) -> Resume:
        if (self.mode == "step") != (self.at is not None):
            raise ValueError("a step resume names its step; the others name none")
        return self

    @classmethod
    def none(cls) -> Resume:
        return cls(mode="none")

    @classmethod
    def latest(cls) -> Resume:
        return cls(mode="latest")

    @classmethod
    def step(cls, step: int) -> Resume:
        return cls(mode="step", at=step)

    def render(self) -> str:
        """The ``--resume`` value: ``none``, ``latest`` or ``step:N``."""
        return f"step:{self.at}" if self.mode == "step" else self.mode

    @classmethod
    def parse(cls, value: str | None) -> Resume:
        """``none|latest|step:N``, or the upstream demo's ``no|yes|N``; ``ValueError`` else."""
        text = (value or "").strip().lower()
        if text in ("none", *_UPSTREAM_NO):
            return cls.none()
        if text in ("latest", *_UPSTREAM_YES):
            return cls.latest()
        digits = text.removeprefix("step:")
        if digits.isdigit() and int(digits) > 0:
            return cls.step(int(digits))
        raise ValueError(
            f"resume must be none, latest or step:N (upstream: no, yes or N > 0), got {value!r}"
        )


class TrainerArgs(BaseModel):
    """What one trainer process is told on its command line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path = Field(description="directory holding the config's data files")
    model_dir: Path = Field(description="base model directory")
    config_path: Path = Field(description="the run config (config.yaml)")
    resume: Resume = Resume.none()
    output_dir: Path | None = Field(default=None, description="checkpoints and events.jsonl")
    base_model_name: str | None = Field(default=None, description="registry name of the base")
    feature_cache: Path | None = Field(default=None, description="pre-tokenised datasets")
    lock: Path | None = Field(default=None, description="the job directory's trainer.lock")
    attempt: int = Field(default=0, ge=0, description="with lock: this run's attempt")
    lock_wait_s: float = Field(default=60.0, ge=0, description="with lock: wait for the holder")
    trust_remote_code: bool = Field(default=False, description="the operator's choice per base")

    def argv(self) -> list[str]:
        """The arguments after ``-m trainer.finetune``."""
        args = [str(self.data_dir), str(self.model_dir), str(self.config_path)]
        args += ["--resume", self.resume.render()]
        if self.output_dir is not None:
            args += ["--output-dir", str(self.output_dir)]
        if self.base_model_name is not None:
            args += ["--base-model-name", self.base_model_name]
        if self.feature_cache is not None:
            args += ["--feature-cache", str(self.feature_cache)]
        if self.lock is not None:
            args += ["--lock", str(self.lock), "--attempt", str(self.attempt)]
            args += ["--lock-wait", repr(self.lock_wait_s)]
        if self.trust_remote_code:
            args.append("--trust-remote-code")
        return args

    @classmethod
    def parse(
        cls,
        argv: Sequence[str],
        prog: str = "python -m trainer.finetune",
        description: str | None = None,
    ) -> TrainerArgs:
        parser = argparse.ArgumentParser(
            prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        add_arguments(parser)
        try:
            return cls.from_namespace(parser.parse_args(list(argv)))
        except ValueError as exc:
            parser.error(str(exc))

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> TrainerArgs:
        """From what :func:`add_arguments` parsed; ``ValueError`` when the positional upstream
        resume and ``--resume`` are both given."""
        if ns.resume_flag is not None and ns.resume is not None:
            raise ValueError("give the resume once: the positional yes|N|no or --resume")
        return cls(
            data_dir=ns.data_dir,
            model_dir=ns.model_dir,
            config_path=ns.config,
            resume=ns.resume_flag or ns.resume or Resume.none(),
            output_dir=ns.output_dir,
            base_model_name=ns.base_model_name,
            feature_cache=ns.feature_cache,
            lock=ns.lock,
            attempt=ns.attempt,
            lock_wait_s=ns.lock_wait,
            trust_remote_code=ns.trust_remote_code,
        )


class TrainerCommand(BaseModel):
    """The whole launch: one process, or ``torch.distributed.run`` with ``nproc`` ranks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nproc: int = Field(ge=1, description="ranks (one per leased GPU; 1 on CPU)")
    args: TrainerArgs
    python: str = Field(default=sys.executable, description="the interpreter to run")

    def argv(self) -> list[str]:
        launcher = [self.python, "-m"]
        if self.nproc > 1:
            launcher += [
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={self.nproc}",
                "-m",
            ]
        return [*launcher, "trainer.finetune", *self.args.argv()]


def _resume(value: str) -> Resume:
    try:
        return Resume.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The trainer's command line (``python -m trainer.finetune`` and ``glmft finetune``)."""
    parser.add_argument(
        "data_dir",
        type=Path,
        metavar="DATA_DIR",
        help="directory holding the config's data files (data_config: train.jsonl, dev.jsonl)",
    )
    parser.add_argument(
        "model_dir",
        type=Path,
        metavar="MODEL_DIR",
        help="base model directory: a native GLM-4 checkpoint (glm-4-9b-chat-hf, GLM-4-9B-0414)",
    )
    parser.add_argument(
        "config",
        type=Path,
        metavar="CONFIG",
        help="upstream-style yaml config (configs/lora.yaml, ptuning_v2.yaml, sft.yaml, tiny/...)",
    )
    parser.add_argument(
        "resume",
        nargs="?",
        default=None,
        type=_resume,
        metavar="yes|N|no",
        help="the upstream demo's form: 'yes': resume from the newest complete checkpoint (or "
        "start fresh when there is none); N: from checkpoint-N; 'no' (default): from scratch",
    )
    parser.add_argument(
        "--resume",
        dest="resume_flag",
        default=None,
        type=_resume,
        metavar="none|latest|step:N",
        help="the same, typed: none (default), latest, or step:N",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="where checkpoints and events.jsonl go (default: training_args.output_dir)",
    )
    parser.add_argument(
        "--base-model-name",
        metavar="NAME",
        help="registry name recorded in checkpoints (default: the model directory's name)",
    )
    parser.add_argument(
        "--feature-cache",
        type=Path,
        metavar="DIR",
        help="directory of pre-tokenised datasets reused across runs (default: none)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load a checkpoint whose modeling code ships with it (the operator's choice)",
    )
    parser.add_argument(
        "--lock",
        type=Path,
        metavar="FILE",
        help="hold FILE while training; refuse to run while another trainer holds it",
    )
    parser.add_argument(
        "--attempt",
        type=int,
        default=0,
        metavar="N",
        help="with --lock: this run's attempt; refuse to run once a newer attempt has run",
    )
    parser.add_argument(
        "--lock-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --lock: how long to wait for the holder to exit (default 60)",
    )
