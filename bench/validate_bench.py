"""Micro benchmark: GLM-4 schema validation against plain ``json.loads`` on AdvertiseGen-like rows.

Writes N rows (prompt like ``类型#裙*版型#宽松*风格#性感*图案#线条``, answer ~110 Chinese
characters) to a temporary JSONL file and times, best of ``--repeat``, on one core:

* ``json_loads``: read the file as text, line by line, ``json.loads`` each line (the baseline);
* ``validate_path``: ``trainer.validation.validate_path`` (read + parse + schema check);
* ``check_only``: ``validate_conversation`` on the already parsed rows.

Target (docs/design performance.md): ``validate_path`` within 3x ``json_loads``. Prints a table and
writes ``bench/results/validate_bench.json``. Run: ``python bench/validate_bench.py [--rows N]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.validation import validate_conversation, validate_path

_ATTRS = {
    "类型": ("裙", "裤", "上衣", "外套", "衬衫", "毛衣", "卫衣", "连衣裙"),
    "版型": ("宽松", "修身", "直筒", "A字"),
    "风格": ("性感", "简约", "复古", "清新", "休闲", "通勤", "街头"),
    "图案": ("线条", "条纹", "格子", "印花", "纯色", "刺绣"),
    "材质": ("牛仔布", "棉", "雪纺", "真丝", "针织"),
}
_CHARS = (
    "这款裙子采用宽松的版型设计穿着舒适自在性感的线条图案时尚大方面料柔软亲肤搭配百搭单品凸显气质"
)


def make_row(rng: random.Random) -> dict[str, Any]:
    keys = rng.sample(sorted(_ATTRS), k=rng.randint(3, 5))
    prompt = "*".join(f"{k}#{rng.choice(_ATTRS[k])}" for k in keys)
    length = max(40, min(250, int(rng.gauss(110, 30))))
    answer = "".join(rng.choice(_CHARS) for _ in range(length)) + "。"
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    }


def write_rows(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            fh.write(json.dumps(make_row(rng), ensure_ascii=False) + "\n")


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def loads_only(path: Path) -> int:
    """The baseline: plain ``json.loads`` of every non-blank line of the text file."""
    n = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                json.loads(line)
                n += 1
    return n


def parse_rows(path: Path) -> list[Any]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def check_only(rows: list[Any]) -> None:
    for row in rows:
        errors, _ = validate_conversation(row)
        if errors:
            raise AssertionError(errors)


def device() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "validate_bench.json",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "advertisegen.jsonl"
        write_rows(path, args.rows)
        size = path.stat().st_size
        rows = parse_rows(path)
        report = validate_path(path)
        if not report.valid or report.conversations != args.rows:
            raise SystemExit(f"generated data did not validate: {report.errors[:3]}")
        timings = {
            "json_loads": best_of(args.repeat, lambda: loads_only(path)),
            "validate_path": best_of(args.repeat, lambda: validate_path(path)),
            "check_only": best_of(args.repeat, lambda: check_only(rows)),
        }
    base = timings["json_loads"]
    results = {
        name: {
            "seconds": round(t, 4),
            "rows_per_s": round(args.rows / t),
            "x_json_loads": round(t / base, 2),
        }
        for name, t in timings.items()
    }
    lines = [
        f"{args.rows} rows, {size / 2**20:.1f} MiB, best of {args.repeat}",
        f"{'case':<15}{'seconds':>10}{'rows/s':>12}{'x json.loads':>14}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<15}{r['seconds']:>10.3f}{r['rows_per_s']:>12,}{r['x_json_loads']:>14.2f}"
        )
    out = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device(),
        "rows": args.rows,
        "bytes": size,
        "repeat": args.repeat,
        "results": results,
        "target": "validate_path <= 3x json_loads",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    lines.append(f"wrote {args.out}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
