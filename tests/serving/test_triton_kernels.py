"""The serving engine's Triton kernels on the CPU, through Triton's interpreter: each kernel of
serving.fused, the tiny model's prefill and decode logits and greedy answers with them, and the
paged decode attention whole and split, equal the torch code they replace (float32; bf16 is
compared on the GPU by ``bench/chat_bench.py``'s checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHECK = Path(__file__).with_name("triton_check.py")
ROOT = Path(__file__).resolve().parents[2]


def test_triton_kernels_compute_what_the_torch_code_computes(tmp_path: Path) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(CHECK), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    kernels, engine = report["fused"], report["engine"]
    assert kernels["residual_sum_equal"] and kernels["no_residual_returns_input"]
    assert kernels["rotate_q_equal"] and kernels["rotate_k_equal"]
    for name in ("add_rms_norm", "rms_norm", "silu_mul"):
        assert kernels[name] <= 1e-5, (name, kernels[name])
    assert engine["logits_scale"] > 1.0
    assert engine["prefill"] <= 1e-4 and engine["decode"] <= 1e-4, engine
    assert engine["equal_answers"]
    assert set(report["attention"]) == {"splits_1", "splits_2", "splits_8"}
    for splits, difference in report["attention"].items():
        assert difference <= 1e-5, (splits, difference)
