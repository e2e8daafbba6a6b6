"""Readers for .jsonl / .json / data dirs, line numbers, read errors and the data hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.datafiles import (
    DataFileError,
    RawRecord,
    data_files,
    data_sha256,
    iter_json,
    iter_jsonl,
    iter_records,
)

ROW = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "嗨"}]}
LINE = json.dumps(ROW, ensure_ascii=False)


def positions(records: list[RawRecord]) -> list[tuple[int | None, int | None]]:
    return [(r.line, r.index) for r in records]


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path: Path) -> None:
    # given
    file = tmp_path / "d.jsonl"
    file.write_text(f"\n{LINE}\n  \n{LINE}\r\n\n{LINE}", encoding="utf-8")
    # when
    records = list(iter_jsonl(file))
    # then
    assert positions(records) == [(2, 0), (4, 1), (6, 2)]
    assert all(r.value == ROW and r.error is None and r.file == str(file) for r in records)


def test_jsonl_invalid_line_reports_column_and_hint(tmp_path: Path) -> None:
    file = tmp_path / "d.jsonl"
    file.write_text(f'{LINE}\n{{"messages": [}}\n{LINE}\n', encoding="utf-8")
    records = list(iter_jsonl(file))
    assert positions(records) == [(1, 0), (2, 1), (3, 2)]
    error = records[1].error
    assert error is not None
    assert error.kind == "json"
    assert "column 15" in error.message
    assert "each line must be one complete JSON object" in error.message


def test_jsonl_pretty_printed_object_fails_per_line(tmp_path: Path) -> None:
    file = tmp_path / "d.jsonl"
    file.write_text(json.dumps(ROW, indent=2), encoding="utf-8")
    records = list(iter_jsonl(file))
    assert len(records) == len(json.dumps(ROW, indent=2).splitlines())
    assert all(r.error is not None and r.error.kind == "json" for r in records)


def test_jsonl_bad_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    file = tmp_path / "d.jsonl"
    file.write_bytes(LINE.encode() + b'\n{"a": "\xe4\xbd"}\n' + LINE.encode() + b"\n")
    records = list(iter_jsonl(file))
    assert records[1].line == 2
    assert records[1].error is not None
    assert records[1].error.kind == "utf8"
    assert records[2].value == ROW


def test_jsonl_bom_is_ignored(tmp_path: Path) -> None:
    file = tmp_path / "d.jsonl"
    file.write_bytes(b"\xef\xbb\xbf" + LINE.encode() + b"\n")
    assert [r.value for r in iter_jsonl(file)] == [ROW]


def test_empty_files_yield_one_file_level_error(tmp_path: Path) -> None:
    for name, text in (("a.jsonl", "\n \n"), ("b.json", "  "), ("c.json", "[ ]")):
        (tmp_path / name).write_text(text, encoding="utf-8")
        (record,) = iter_records(tmp_path / name)
        assert record.error is not None
        assert (record.error.kind, record.line, record.index) == ("empty", None, None)


def test_json_array_records_index_and_element_line(tmp_path: Path) -> None:
    file = tmp_path / "d.json"
    file.write_text(json.dumps([ROW, ROW, 3], indent=2), encoding="utf-8")
    lines = file.read_text(encoding="utf-8").splitlines()
    starts = [n for n, text in enumerate(lines, 1) if text in ("  {", "  3")]
    records = list(iter_json(file))
    assert positions(records) == [(starts[0], 0), (starts[1], 1), (starts[2], 2)]
    assert starts[0] == 2
    assert [r.value for r in records] == [ROW, ROW, 3]


def test_json_single_object(tmp_path: Path) -> None:
    file = tmp_path / "d.json"
    file.write_text("\n\n" + json.dumps(ROW, indent=2) + "\n", encoding="utf-8")
    assert positions(list(iter_json(file))) == [(3, 0)]


def test_json_syntax_error_reports_line_and_stops(tmp_path: Path) -> None:
    file = tmp_path / "d.json"
    file.write_text(f'[\n{LINE},\n{LINE},\n{{"messages": oops}}\n]', encoding="utf-8")
    records = list(iter_json(file))
    assert positions(records) == [(2, 0), (3, 1), (4, 2)]
    error = records[2].error
    assert error is not None
    assert error.kind == "json"
    assert "line 4" in error.message


@pytest.mark.parametrize(
    ("text", "line"), [(f"[{LINE}] x", 1), (f"[{LINE}\n{LINE}]", 2), (f"{LINE}\n{LINE}", 2)]
)
def test_json_missing_comma_or_trailing_data(tmp_path: Path, text: str, line: int) -> None:
    file = tmp_path / "d.json"
    file.write_text(text, encoding="utf-8")
    records = list(iter_json(file))
    assert records[-1].error is not None
    assert records[-1].error.kind == "json"
    assert records[-1].line == line


def test_json_bad_utf8_reports_line(tmp_path: Path) -> None:
    file = tmp_path / "d.json"
    file.write_bytes(b'[\n{"messages": []},\n"\xff"\n]')
    (record,) = iter_json(file)
    assert record.error is not None
    assert (record.error.kind, record.line) == ("utf8", 3)


def test_data_dir_reads_present_splits_in_order(tmp_path: Path) -> None:
    for name in ("test.jsonl", "train.jsonl", "notes.txt"):
        (tmp_path / name).write_text(LINE + "\n", encoding="utf-8")
    assert data_files(tmp_path) == [tmp_path / "train.jsonl", tmp_path / "test.jsonl"]
    assert [Path(r.file).name for r in iter_records(tmp_path)] == ["train.jsonl", "test.jsonl"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.jsonl", "no such file"),
        ("d.csv", "unsupported file type '.csv'"),
        ("emptydir", "no data file in directory"),
    ],
)
def test_unusable_inputs_raise(tmp_path: Path, name: str, message: str) -> None:
    if name == "d.csv":
        (tmp_path / name).write_text("a,b\n", encoding="utf-8")
    if name == "emptydir":
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.json").write_text("[]", encoding="utf-8")
    with pytest.raises(DataFileError, match=message):
        list(iter_records(tmp_path / name))


def test_data_sha256_depends_on_names_and_bytes_only(tmp_path: Path) -> None:
    # given: the same data in two places
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "train.jsonl").write_text(LINE + "\n", encoding="utf-8")
        (tmp_path / d / "dev.jsonl").write_text(LINE + "\n" + LINE + "\n", encoding="utf-8")
    digest = data_sha256(tmp_path / "a")
    # then
    assert len(digest) == 64
    assert digest == data_sha256(tmp_path / "b")
    assert digest == data_sha256([tmp_path / "a" / "train.jsonl", str(tmp_path / "a/dev.jsonl")])
    assert digest != data_sha256([tmp_path / "a" / "dev.jsonl", tmp_path / "a" / "train.jsonl"])
    (tmp_path / "b" / "dev.jsonl").rename(tmp_path / "b" / "test.jsonl")
    assert digest != data_sha256(tmp_path / "b")
    (tmp_path / "a" / "dev.jsonl").write_text(LINE + "\n", encoding="utf-8")
    assert digest != data_sha256(tmp_path / "a")


@pytest.mark.parametrize(
    "bad", ["[" * 100_000, '{"n": ' + "9" * 5000 + "}"], ids=["deep_nesting", "huge_integer"]
)
def test_pathological_json_is_a_read_error_not_a_crash(tmp_path: Path, bad: str) -> None:
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(f"{LINE}\n{bad}\n{LINE}\n", encoding="utf-8")
    array = tmp_path / "d.json"
    array.write_text(f"[{LINE},\n{bad}]", encoding="utf-8")
    records = list(iter_jsonl(jsonl))
    assert [r.error is None for r in records] == [True, False, True]
    (good, broken) = iter_json(array)
    assert good.error is None
    assert broken.error is not None
    assert (broken.error.kind, broken.line, broken.index) == ("json", 2, 1)
