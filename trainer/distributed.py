"""Process-group facts from the launcher's environment (the one place the trainer reads it)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import NoReturn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int

    @classmethod
    def from_env(cls) -> DistInfo:
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def launched(self) -> bool:
        return "RANK" in os.environ


def ensure_single_process_group() -> None:
    """Give a plain ``python -m trainer.finetune`` the env a launcher would set.

    DeepSpeed needs RANK/WORLD_SIZE/MASTER_ADDR even for one process; without a launcher it falls
    back to MPI discovery and fails (upstream #271). One local process is what the user meant.
    """
    if "RANK" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )


def configure_logging(dist: DistInfo) -> None:
    """INFO on rank 0, WARNING elsewhere, so eight ranks do not print eight copies."""
    level = logging.INFO if dist.is_main else logging.WARNING
    fmt = f"%(asctime)s %(levelname)s [rank{dist.rank}] %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, force=True)


def close_process_group() -> bool:
    """Destroy the default process group after a successful run, once every rank is here;
    whether there was one. Only after success: a failed rank never arrives (torchrun then stops
    the others)."""
    import torch.distributed as torch_dist

    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return False
    torch_dist.barrier()
    torch_dist.destroy_process_group()
    logging.getLogger(__name__).info("process group closed")
    return True


def exit_process(code: int) -> NoReturn:
    """End the trainer process with ``code`` without the interpreter's finalisation.

    Threads that distributed libraries leave in C++ objects (gloo's among them) can abort a rank
    while Python finalises, after training succeeded: SIGABRT, "terminate called without an
    active exception", seen twice in CI on two-rank CPU runs, once with the group destroyed.
    Under the worker that would turn a finished job into a failed one. Everything the run keeps is
    written by now (events are flushed line by line, checkpoints closed), so only the logs and
    standard streams are flushed first.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
