"""How long the trainer spends turning a dataset into training features, without the feature
cache, filling it, and reading it back (``trainer.datacache``); CPU only.

    python bench/feature_cache_bench.py [--rows 50000] [--kind adgen|chat]

Writes bench/results/feature_cache_bench.json (and $OUT when set) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from train_bench_setup import write_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--kind", default="adgen", choices=("adgen", "chat"))
    args = parser.parse_args(argv)

    from trainer.config import load_config
    from trainer.finetune import build_datasets
    from trainer.template import SpecialTokens
    from trainer.tiny import build_tokenizer

    work = Path(tempfile.mkdtemp(prefix="glmft-cache-bench-"))
    tokenizer = build_tokenizer()
    tokenizer_dir = work / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    data = write_data(work / "data", tokenizer, args.kind, args.rows, 16)
    config = load_config(REPO / "configs" / "lora.yaml")
    special = SpecialTokens.from_tokenizer(tokenizer)
    files = {"train": work / "data" / "train.jsonl"}

    def timed(cache: tuple[Path, Path] | None) -> tuple[float, int]:
        t0 = time.perf_counter()
        train, _ = build_datasets(
            tokenizer, special, config, files, with_eval=False, generate=False, cache=cache
        )
        return time.perf_counter() - t0, len(train)

    cache = (work / "cache", tokenizer_dir)
    rows: list[dict[str, Any]] = []
    for name, option in (("no cache", None), ("cache miss (fill)", cache), ("cache hit", cache)):
        seconds, count = timed(option)
        rows.append(
            {"case": name, "seconds": round(seconds, 3), "rows_per_s": round(count / seconds)}
        )
    report = {
        "benchmark": "feature_cache_bench",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/feature_cache_bench.py", *(argv or sys.argv[1:])]),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
        "data": data,
        "cache_bytes": sum(p.stat().st_size for p in (work / "cache").glob("*.npz")),
        "results": rows,
    }
    print("| case | seconds | rows/s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['seconds']} | {r['rows_per_s']:,} |")
    text = json.dumps(report, ensure_ascii=False, indent=1)
    out = REPO / "bench" / "results" / "feature_cache_bench.json"
    out.write_text(text, encoding="utf-8")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], out.name).write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
