"""``bench/vision_bench.py --tiny``: the GPU bench's code path (the 9B run's model class, LoRA
attach, collator and step loop) runs on CPU in seconds and writes its JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tiny_smoke_run_trains_lora_and_writes_json(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import vision_bench
    finally:
        sys.path.remove(str(REPO / "bench"))
    out = tmp_path / "vision.json"
    assert vision_bench.main(["--tiny", "--tower-lora", "--steps", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"].startswith("tiny") and result["lora_on_vision_tower"] is True
    assert 0 < result["trainable_params"] < result["total_params"]
    assert result["image_tokens_per_row"] == 4  # 56 px: 4 x 4 patches merged 2 x 2
    assert result["tokens_per_s"] > 0 and result["upstream_gb"] == 75.0
