"""The GLM-4 conversation validator: whole-file reports, positions, report shape, import cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.validation_examples import (
    FULL_TOOLS,
    REPO,
    VALID,
    a,
    conv,
    u,
    write_jsonl,
)
from trainer.validation import (
    DataValidationError,
    Issue,
    iter_conversations,
    validate_path,
)


def test_file_with_several_bad_lines_reports_all_of_them(tmp_path: Path) -> None:
    # given
    rows: list[Any] = [
        VALID,  # 1
        conv(u(None), a()),  # 2 content_invalid
        "",  # 3 blank
        '{"messages": [{"role": "user"',  # 4 invalid_json
        "{",  # 5 pretty-printed object ...
        '  "messages": []',  # 6
        "}",  # 7
        VALID,  # 8
        conv(u(), {"role": "bot", "content": "x"}),  # 9 role_invalid + no_assistant_content
    ]
    file = write_jsonl(tmp_path / "bad.jsonl", rows)
    # when
    report = validate_path(file)
    # then
    got = {(i.line, i.code) for i in report.errors}
    assert got == {
        (2, "content_invalid"),
        (4, "invalid_json"),
        (5, "invalid_json"),
        (6, "invalid_json"),
        (7, "invalid_json"),
        (9, "role_invalid"),
        (9, "no_assistant_content"),
    }
    assert report.conversations == 8
    hint = next(i for i in report.errors if i.line == 5)
    assert "each line must be one complete JSON object" in hint.message
    assert all(i.file == str(file) for i in report.errors)


def test_json_array_reports_by_index(tmp_path: Path) -> None:
    file = tmp_path / "d.json"
    file.write_text(
        json.dumps([VALID, conv(u()), VALID, conv(u(), a(None))], indent=2), encoding="utf-8"
    )
    report = validate_path(file)
    assert report.conversations == 4
    assert {(i.index, i.code) for i in report.errors} == {
        (1, "no_assistant_content"),
        (3, "content_invalid"),
    }
    assert all(i.line is not None and i.location == f"{file}:[{i.index}]" for i in report.errors)


def test_json_single_object(tmp_path: Path) -> None:
    file = tmp_path / "one.json"
    file.write_text(json.dumps(FULL_TOOLS, indent=2, ensure_ascii=False), encoding="utf-8")
    report = validate_path(file)
    assert report.valid
    assert report.conversations == 1


def test_data_dir_validates_every_split(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [VALID, VALID])
    write_jsonl(tmp_path / "dev.jsonl", [VALID, conv(u())])
    report = validate_path(tmp_path)
    assert report.conversations == 4
    assert [(i.file, i.line, i.code) for i in report.errors] == [
        (str(tmp_path / "dev.jsonl"), 2, "no_assistant_content")
    ]


def test_read_errors_become_issues(tmp_path: Path) -> None:
    file = tmp_path / "d.jsonl"
    file.write_bytes(b'{"messages": []}\n\xff\xfe\n')
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    assert [(i.line, i.code) for i in validate_path(file).errors] == [
        (1, "messages_empty"),
        (2, "invalid_utf8"),
    ]
    report = validate_path(empty)
    assert [(i.line, i.index, i.code) for i in report.errors] == [(None, None, "file_empty")]
    assert report.conversations == 0


def test_on_conversation_gets_valid_conversations_with_line_or_index(tmp_path: Path) -> None:
    # given
    jsonl = write_jsonl(tmp_path / "d.jsonl", [VALID, "", conv(u()), FULL_TOOLS])
    array = tmp_path / "d.json"
    array.write_text(json.dumps([conv(u()), VALID]), encoding="utf-8")
    seen: list[tuple[int, int]] = []
    # when
    validate_path(jsonl, on_conversation=lambda m, pos: seen.append((pos, len(m))))
    validate_path(array, on_conversation=lambda m, pos: seen.append((pos, len(m))))
    # then: JSONL by line, .json by index
    assert seen == [(1, 2), (4, len(FULL_TOOLS["messages"])), (1, 2)]


def test_iter_conversations_yields_positions_and_stops_on_invalid(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "d.jsonl", [VALID, "", FULL_TOOLS, conv(u()), VALID])
    lenient = list(iter_conversations(file, strict=False))
    assert [(r.line, r.index) for r in lenient] == [(1, 0), (3, 1), (5, 3)]
    assert lenient[1].obj == FULL_TOOLS
    strict = iter_conversations(file)
    assert next(strict).line == 1
    assert next(strict).line == 3
    with pytest.raises(DataValidationError, match=r"d\.jsonl:4: messages") as info:
        next(strict)
    assert info.value.issues[0].code == "no_assistant_content"


def test_report_to_dict_shape(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "d.jsonl", [conv(u(""), a(None))])
    data = validate_path(file).to_dict()
    assert set(data) == {"valid", "conversations", "errors", "warnings", "stats"}
    assert data["errors"][0] == {
        "file": str(file),
        "line": 1,
        "index": 0,
        "path": "messages[1].content",
        "code": "content_invalid",
        "message": "content must be a string, got null",
    }
    assert data["stats"] == {}
    json.dumps(data)


def test_issue_location() -> None:
    assert Issue("a.jsonl", 3, 2, "", "x", "m").location == "a.jsonl:3"
    assert Issue("a.json", 9, 2, "", "x", "m").location == "a.json:[2]"
    assert Issue("a.json", 4, None, "", "x", "m").location == "a.json:4"
    assert Issue("a.jsonl", None, None, "", "x", "m").location == "a.jsonl"


def test_import_does_not_pull_torch() -> None:
    code = (
        "import sys, trainer.validation, trainer.datafiles, trainer.conversation; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
