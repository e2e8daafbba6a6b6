"""``bench/chat_bench.py --tiny`` and ``bench/eval_bench.py --tiny``: the GPU benches' code paths
(the engine with many adapters, prefixes, hot-loads, an evaluation through the service) run on the
CPU and write their JSON, so the scripts anyone reruns on a GPU keep working."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench(name: str) -> object:
    sys.path.insert(0, str(REPO))
    try:
        return __import__(f"bench.{name}", fromlist=["main"])
    finally:
        sys.path.remove(str(REPO))


def test_chat_bench_tiny_runs_every_phase_and_its_checks_agree(tmp_path: Path) -> None:
    chat_bench = _bench("chat_bench")
    argv = ["--tiny", "--requests", "8", "--new-tokens", "8", "--cycle", "6", "--slots", "4"]
    assert chat_bench.main([*argv, "--eval-prompts", "16", "--out", str(tmp_path)]) == 0  # type: ignore[attr-defined]
    report = json.loads((tmp_path / "chat_bench_cpu.json").read_text())
    phases = report["phases"]
    assert list(phases) == [
        *("checks", "generate", "torch-ops", "base", "lora", "ptuning", "hot-load", "ttft"),
        "eval",
    ]
    # float32 on the CPU: the engine's greedy tokens are transformers' and PEFT's, every one
    tokens = phases["checks"]["tokens"]
    for kind in ("base", "lora", "base (torch ops)", "lora (torch ops)"):
        assert tokens[kind]["tokens_agreeing_per_row"] == [24] * 4
    assert tokens["fused vs torch ops"]["tokens_agreeing_per_row"] == [24] * 8
    assert phases["checks"]["fused"] == {"skipped": "no Triton on this device"}
    assert phases["base"]["output_tokens"] > 0 and phases["lora"]["output_tokens"] > 0
    assert phases["hot-load"]["n"] > 0 and phases["ttft"]["n"] == 20
    assert set(report["summary"]) >= {
        *("base_tokens_per_second", "base_vs_torch_ops", "lora_32_vs_base", "eval_seconds")
    }


def test_eval_bench_tiny_stores_every_answer(tmp_path: Path) -> None:
    eval_bench = _bench("eval_bench")
    out = tmp_path / "eval.json"
    argv = ["--tiny", "--prompts", "8", "--adapters", "2", "--new-tokens", "4", "--max-batch", "4"]
    assert eval_bench.main([*argv, "--out", str(out)]) == 0  # type: ignore[attr-defined]
    results = json.loads(out.read_text())["results"]
    assert results["evaluation"]["answers"] == 16  # 8 prompts x 2 adapters, stored in SQL
    assert results["evaluation"]["tokens"] > 0 and results["upstream"]["answers"] == 8
