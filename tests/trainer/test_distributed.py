"""torchrun on CPU: two ranks train one DDP model; DeepSpeed ZeRO-2 and ZeRO-3 runs succeed, ZeRO-3
with glmft's fast path (packing, chunked loss, checkpointing chosen by a memory budget)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as torch_dist

from tests.trainer.finetune_helpers import (
    REPO,
    final_status,
    losses,
    run_finetune,
    tiny_config,
    write_data,
)
from tests.trainer.test_finetune import CONVERSATIONS
from trainer.distributed import close_process_group

QUICK_ARGS = {
    "eval_strategy": "no",
    "save_steps": 1000,
    "logging_steps": 2,
    "max_steps": 6,
    "per_device_train_batch_size": 2,
}


# Long and short replies: the ranks' batches hold different numbers of target tokens, so the
# chunked loss would call the (ZeRO-3 partitioned) output head a different number of times.
LONG = [
    {"messages": [m, {"role": "assistant", "content": r["content"] * 6}]}
    for c in CONVERSATIONS
    for m, r in [c["messages"]]
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = write_data(tmp_path_factory.mktemp("data"), (CONVERSATIONS + LONG) * 4)
    return write_data(directory, CONVERSATIONS, name="dev.jsonl")


def test_torchrun_two_ranks_train_one_ddp_model(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config("lora", training_args=QUICK_ARGS)
    proc, events = run_finetune(data_dir, tiny_model_dir, config, tmp_path / "out", nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert events[0]["world_size"] == 2
    assert final_status(events)["status"] == "succeeded"
    # only rank 0 writes events: one line per logged step, not two
    assert sorted(losses(events)) == [2, 4, 6]
    # the group is closed before exit (left to finalisation, gloo once aborted a rank: SIGABRT)
    assert "process group closed" in proc.stderr


def test_close_process_group_destroys_the_default_group() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch_dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
    )
    assert close_process_group() is True
    assert not torch_dist.is_initialized()
    assert close_process_group() is False  # nothing to close: a single-process run


@pytest.mark.parametrize("zero", ["ds_zero_2.json", "ds_zero_3.json"])
def test_deepspeed_zero_full_sft_on_two_ranks(
    zero: str, data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        "sft", training_args={**QUICK_ARGS, "deepspeed": str(REPO / "configs" / zero)}
    )
    if zero == "ds_zero_3.json":  # glmft's fast path; a tiny budget takes every memory measure
        config.update(packing=True, chunked_loss=True, memory_budget_gib=1e-4, compile=True)
        config["training_args"]["per_device_train_batch_size"] = 8  # several 128-token chunks
    proc, events = run_finetune(data_dir, tiny_model_dir, config, tmp_path / "out", nproc=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert events[0]["world_size"] == 2
    if zero == "ds_zero_3.json":
        plan = events[0]["memory"]
        assert plan["gradient_checkpointing"] and plan["loss_chunk_tokens"] == 128
        # RMSNorm, SwiGLU and RoPE compiled around ZeRO-3's hooks: one graph each
        report = next(e for e in events if e["event"] == "compile")
        assert report["layers"] == 2 and report["graph_breaks"] == 0, report
        assert report["frames"] <= 4, report
    steps = losses(events)
    assert steps[6] < steps[2]
    checkpoint = tmp_path / "out" / "checkpoint-6"
    # ZeRO-3 gathers 16-bit weights on save: the checkpoint reloads in a fresh process
    reload = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, torch; from transformers import AutoModelForCausalLM as M; "
            "m = M.from_pretrained(sys.argv[1]); ids = torch.tensor([[1, 2, 3, 4]]); "
            "loss = m(input_ids=ids, labels=ids).loss; assert torch.isfinite(loss), loss; "
            "print(float(loss))",
            str(checkpoint),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert reload.returncode == 0, reload.stderr[-3000:]
