"""The pre-tokenised feature cache: a second run reads what the first tokenised, any change of
data, tokenizer or lengths is a new entry, and a damaged or unwritable cache never fails a run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.finetune_helpers import run_finetune, tiny_config, write_data
from trainer.contract.events import read_events
from trainer.datacache import cache_key, cached_features

ROWS = [
    {"messages": [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": "答"}]}
    for i in range(6)
]
FEATURES = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]


def counting(features: list[dict[str, list[int]]]) -> tuple[Any, list[int]]:
    calls: list[int] = []

    def build() -> list[dict[str, list[int]]]:
        calls.append(1)
        return features

    return build, calls


def test_second_read_comes_from_the_cache(tmp_path: Path) -> None:
    build, calls = counting(FEATURES)
    first, hit1 = cached_features(tmp_path, "k", build)
    second, hit2 = cached_features(tmp_path, "k", build)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert first == second == FEATURES
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_damaged_entry_is_rebuilt(tmp_path: Path) -> None:
    build, calls = counting(FEATURES)
    cached_features(tmp_path, "k", build)
    (tmp_path / "k.npz").write_bytes(b"not a zip")
    features, hit = cached_features(tmp_path, "k", build)
    assert features == FEATURES and not hit and len(calls) == 2
    assert cached_features(tmp_path, "k", build) == (FEATURES, True)  # and stored again


def test_unwritable_cache_only_costs_the_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache dir would be")
    build, calls = counting(FEATURES)
    assert cached_features(blocker / "cache", "k", build) == (FEATURES, False)
    assert cached_features(None, "k", build) == (FEATURES, False)
    assert len(calls) == 2


def test_key_changes_with_data_tokenizer_and_lengths(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_data(tmp_path / "d", ROWS) / "train.jsonl"
    tokenizer = tmp_path / "tok"
    shutil.copytree(tiny_model_dir, tokenizer)
    key = cache_key(data, tokenizer, combine=True, max_length=257)
    assert key == cache_key(data, tokenizer, combine=True, max_length=257)
    assert key != cache_key(data, tokenizer, combine=False, max_length=257)
    assert key != cache_key(data, tokenizer, combine=True, max_length=129)
    (tokenizer / "tokenizer_config.json").write_text(
        (tokenizer / "tokenizer_config.json").read_text().replace("}", ', "x": 1}', 1)
    )
    assert key != cache_key(data, tokenizer, combine=True, max_length=257)
    with data.open("a", encoding="utf-8") as fh:
        fh.write(
            '{"messages": [{"role": "user", "content": "新"}, '
            '{"role": "assistant", "content": "答"}]}\n'
        )
    assert cache_key(data, tokenizer, combine=True, max_length=257) not in (key,)


def test_trainer_reuses_the_cache_and_trains_the_same(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Two runs with ``--feature-cache``: the second reads the features the first stored (its
    log says so) and logs the same losses."""
    data = write_data(tmp_path / "data", ROWS * 4)
    config = tiny_config(
        "lora",
        training_args={
            "max_steps": 3,
            "logging_steps": 1,
            "eval_strategy": "no",
            "save_strategy": "no",
        },
    )
    config["data_config"] = {**config["data_config"], "val_file": None}
    cache = tmp_path / "cache"
    runs = []
    for name in ("first", "second"):
        proc, _ = run_finetune(
            data,
            tiny_model_dir,
            config,
            tmp_path / name,
            extra_args=["--feature-cache", str(cache)],
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(proc.stderr)
    assert "added to the cache" in runs[0] and "from the cache" in runs[1]
    assert len(list(cache.glob("*.npz"))) == 1

    def curve(name: str) -> list[float]:
        return [e["loss"] for e in read_events(tmp_path / name) if e["event"] == "step"]

    assert curve("first") == pytest.approx(curve("second"), rel=1e-6) and curve("first")
