"""The GLM-4 conversation validator: one test per rule, whole-file reports, pydantic agreement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest

from trainer.conversation import SPECIAL_TOKENS, Conversation
from trainer.validation import (
    WARNING_CODES,
    Code,
    DataValidationError,
    Issue,
    _Found,
    iter_conversations,
    validate_conversation,
    validate_path,
)

REPO = Path(__file__).resolve().parents[2]


def u(content: Any = "你好") -> dict[str, Any]:
    return {"role": "user", "content": content}


def a(content: Any = "你好！有什么可以帮你？", **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **extra}


def obs(content: str = '{"temperature": 20}') -> dict[str, Any]:
    return {"role": "observation", "content": content}


def fn_tool(name: str = "get_weather", **function: Any) -> dict[str, Any]:
    spec = {
        "name": name,
        "description": "Get the weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    spec.update(function)
    return {"type": "function", "function": spec}


def system(tools: Any = None, content: Any = "", **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "system", "content": content, **extra}
    if tools is not None:
        msg["tools"] = tools
    return msg


def conv(*messages: Any, **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages), **extra}


VALID = conv(u("类型#裙*版型#宽松*风格#性感*图案#线条"), a("这款裙子采用宽松版型。"))

FULL_TOOLS = conv(
    system(
        [
            fn_tool(),
            fn_tool(
                "get_time",
                description="Current time",
                parameters={"type": "object", "properties": {}},
            ),
            {"type": "python"},
        ]
    ),
    u("北京天气怎么样？"),
    a('{"city": "北京"}', metadata="get_weather"),
    obs('{"temperature": 20}'),
    a("北京现在 20 度。"),
    u("现在几点？"),
    a("{}", metadata="get_time"),
    obs('{"time": "12:00"}'),
    a("现在是中午 12 点。"),
    u("算一下 2**10"),
    a("print(2**10)", metadata="python"),
    obs("1024"),
    a("结果是 1024。"),
)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Rows that are ``str`` are written verbatim, others as one JSON line."""
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def codes(obj: Any, *, vision: bool = False) -> set[tuple[str, str]]:
    errors, warnings = validate_conversation(obj, vision=vision)
    return {(i.path, i.code) for i in errors + warnings}


ERROR_CASES: list[tuple[str, Any, str, Code]] = [
    ("not_object", [u(), a()], "", Code.CONVERSATION_INVALID),
    ("messages_missing", {"msgs": [u(), a()]}, "messages", Code.MESSAGES_MISSING),
    ("messages_not_list", {"messages": {"role": "user"}}, "messages", Code.MESSAGES_INVALID),
    ("messages_empty", {"messages": []}, "messages", Code.MESSAGES_EMPTY),
    ("message_not_object", conv("hi", a()), "messages[0]", Code.MESSAGE_INVALID),
    (
        "unknown_key",
        conv({**u(), "name": "bob"}, a()),
        "messages[0].name",
        Code.MESSAGE_KEY_UNKNOWN,
    ),
    ("role_missing", conv({"content": "hi"}, a()), "messages[0]", Code.ROLE_MISSING),
    (
        "role_tool",
        conv(u(), {"role": "tool", "content": "x"}, a()),
        "messages[1].role",
        Code.ROLE_INVALID,
    ),
    (
        "role_list",
        conv({"role": ["user"], "content": "x"}, a()),
        "messages[0].role",
        Code.ROLE_INVALID,
    ),
    (
        "system_second",
        conv(u(), system(content="sys"), a()),
        "messages[1].role",
        Code.SYSTEM_NOT_FIRST,
    ),
    (
        "system_twice",
        conv(system(content="s"), system(content="t"), u(), a()),
        "messages[1].role",
        Code.SYSTEM_DUPLICATE,
    ),
    ("content_missing", conv({"role": "user"}, a()), "messages[0]", Code.CONTENT_MISSING),
    (
        "system_content_missing",
        conv({"role": "system"}, u(), a()),
        "messages[0]",
        Code.CONTENT_MISSING,
    ),
    ("content_null", conv(u(None), a()), "messages[0].content", Code.CONTENT_INVALID),
    ("content_number", conv(u(), a(42)), "messages[1].content", Code.CONTENT_INVALID),
    (
        "content_list",
        conv(u([{"type": "text", "text": "hi"}]), a()),
        "messages[0].content",
        Code.CONTENT_INVALID,
    ),
    (
        "special_in_content",
        conv(u("hi<|assistant|>"), a()),
        "messages[0].content",
        Code.SPECIAL_TOKEN,
    ),
    (
        "special_in_metadata",
        conv(system([fn_tool()]), u(), a("{}", metadata="[gMASK]x"), obs(), a()),
        "messages[2].metadata",
        Code.SPECIAL_TOKEN,
    ),
    (
        "special_in_tool",
        conv(system([fn_tool(description="use <|observation|>")]), u(), a()),
        "messages[0].tools[0].function",
        Code.SPECIAL_TOKEN,
    ),
    ("no_assistant", conv(u()), "messages", Code.NO_ASSISTANT_CONTENT),
    ("assistant_empty_only", conv(u(), a("")), "messages", Code.NO_ASSISTANT_CONTENT),
    (
        "observation_after_user",
        conv(u(), obs(), a()),
        "messages[1].role",
        Code.OBSERVATION_NOT_AFTER_ASSISTANT,
    ),
    (
        "observation_first",
        conv(obs(), a()),
        "messages[0].role",
        Code.OBSERVATION_NOT_AFTER_ASSISTANT,
    ),
    (
        "observation_twice",
        conv(u(), a("{}", metadata="f"), obs(), obs(), a()),
        "messages[3].role",
        Code.OBSERVATION_NOT_AFTER_ASSISTANT,
    ),
    (
        "observation_after_text",
        conv(u(), a("let me check"), obs(), a()),
        "messages[1].content",
        Code.OBSERVATION_WITHOUT_TOOL_CALL,
    ),
    (
        "observation_after_json_without_name",
        conv(u(), a('{"arguments": {}}'), obs(), a()),
        "messages[1].content",
        Code.OBSERVATION_WITHOUT_TOOL_CALL,
    ),
    (
        "tools_on_user",
        conv({**u(), "tools": [fn_tool()]}, a()),
        "messages[0].tools",
        Code.TOOLS_NOT_ON_SYSTEM,
    ),
    (
        "tools_null_on_user",
        conv({**u(), "tools": None}, a()),
        "messages[0].tools",
        Code.TOOLS_NOT_ON_SYSTEM,
    ),
    (
        "tools_not_list",
        conv(system({"type": "python"}), u(), a()),
        "messages[0].tools",
        Code.TOOLS_INVALID,
    ),
    (
        "tool_not_object",
        conv(system(["get_weather"]), u(), a()),
        "messages[0].tools[0]",
        Code.TOOL_INVALID,
    ),
    (
        "tool_readme_skeleton",
        conv(system([{"name": "t", "args": {"a": "b"}}]), u(), a()),
        "messages[0].tools[0]",
        Code.TOOL_INVALID,
    ),
    (
        "tool_unknown_type",
        conv(system([{"type": "retrieval"}]), u(), a()),
        "messages[0].tools[0]",
        Code.TOOL_INVALID,
    ),
    (
        "tool_function_missing",
        conv(system([{"type": "function"}]), u(), a()),
        "messages[0].tools[0].function",
        Code.TOOL_FUNCTION_INVALID,
    ),
    (
        "tool_name_empty",
        conv(system([fn_tool("")]), u(), a()),
        "messages[0].tools[0].function.name",
        Code.TOOL_NAME_INVALID,
    ),
    (
        "tool_name_duplicate",
        conv(system([fn_tool(), fn_tool()]), u(), a()),
        "messages[0].tools[1].function.name",
        Code.TOOL_NAME_DUPLICATE,
    ),
    (
        "tool_description_number",
        conv(system([fn_tool(description=1)]), u(), a()),
        "messages[0].tools[0].function.description",
        Code.TOOL_DESCRIPTION_INVALID,
    ),
    (
        "tool_parameters_missing",
        conv(
            system([{"type": "function", "function": {"name": "f", "description": "d"}}]), u(), a()
        ),
        "messages[0].tools[0].function.parameters",
        Code.TOOL_PARAMETERS_INVALID,
    ),
    (
        "tool_parameters_type",
        conv(system([fn_tool(parameters={"type": "array", "properties": {}})]), u(), a()),
        "messages[0].tools[0].function.parameters.type",
        Code.TOOL_PARAMETERS_INVALID,
    ),
    (
        "tool_properties_list",
        conv(system([fn_tool(parameters={"type": "object", "properties": []})]), u(), a()),
        "messages[0].tools[0].function.parameters.properties",
        Code.TOOL_PARAMETERS_INVALID,
    ),
    (
        "tool_required_string",
        conv(
            system([fn_tool(parameters={"type": "object", "properties": {}, "required": "city"})]),
            u(),
            a(),
        ),
        "messages[0].tools[0].function.parameters.required",
        Code.TOOL_PARAMETERS_INVALID,
    ),
    (
        "metadata_on_user",
        conv({**u(), "metadata": "f"}, a()),
        "messages[0].metadata",
        Code.METADATA_NOT_ALLOWED,
    ),
    (
        "metadata_number",
        conv(u(), a("{}", metadata=3), obs(), a()),
        "messages[1].metadata",
        Code.METADATA_INVALID,
    ),
    (
        "metadata_null",
        conv(u(), a("{}", metadata=None), obs(), a()),
        "messages[1].metadata",
        Code.METADATA_INVALID,
    ),
    (
        "metadata_two_lines",
        conv(u(), a("{}", metadata="f\ng"), obs(), a()),
        "messages[1].metadata",
        Code.METADATA_INVALID,
    ),
    (
        "native_call_not_json",
        conv(system([fn_tool()]), u(), a("Beijing", metadata="get_weather"), obs(), a()),
        "messages[2].content",
        Code.TOOL_CALL_ARGUMENTS_INVALID,
    ),
    (
        "native_call_json_array",
        conv(u(), a('["北京"]', metadata="get_weather"), obs(), a()),
        "messages[1].content",
        Code.TOOL_CALL_ARGUMENTS_INVALID,
    ),
    (
        "image_without_vision",
        conv({**u(), "image": "/img/1.jpg"}, a()),
        "messages[0].image",
        Code.IMAGE_NOT_ALLOWED,
    ),
]

VISION_ERROR_CASES: list[tuple[str, Any, str, Code]] = [
    (
        "image_second",
        conv(u(), a(), {**u(), "image": "/img/1.jpg"}, a()),
        "messages[2].image",
        Code.IMAGE_NOT_FIRST,
    ),
    ("image_number", conv({**u(), "image": 7}, a()), "messages[0].image", Code.IMAGE_INVALID),
    (
        "system_in_vision",
        conv(system(content="s"), {**u(), "image": "/i.jpg"}, a()),
        "messages[0].role",
        Code.SYSTEM_NOT_SUPPORTED_VISION,
    ),
]

WARNING_CASES: list[tuple[str, Any, str, Code]] = [
    ("top_level_key", conv(u(), a(), id=7), "id", Code.CONVERSATION_KEY_UNKNOWN),
    ("empty_user", conv(u(""), a()), "messages[0].content", Code.CONTENT_EMPTY),
    ("empty_system", conv(system(content=""), u(), a()), "messages[0].content", Code.CONTENT_EMPTY),
    (
        "last_assistant_empty",
        conv(u(), a(), u(), a("")),
        "messages[3].content",
        Code.LAST_ASSISTANT_EMPTY,
    ),
    ("ends_with_user", conv(u(), a(), u()), "messages[2]", Code.TRAILING_MESSAGES),
    ("tools_empty", conv(system([]), u(), a()), "messages[0].tools", Code.TOOLS_EMPTY),
    (
        "tool_no_description",
        conv(
            system(
                [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {}},
                        },
                    }
                ]
            ),
            u(),
            a(),
        ),
        "messages[0].tools[0].function",
        Code.TOOL_DESCRIPTION_MISSING,
    ),
    (
        "native_unknown_tool",
        conv(system([fn_tool()]), u(), a("{}", metadata="get_time"), obs(), a()),
        "messages[2].metadata",
        Code.TOOL_UNKNOWN,
    ),
    (
        "readme_unknown_tool",
        conv(system([fn_tool()]), u(), a('{"name": "get_time", "arguments": {}}'), obs(), a()),
        "messages[2].content",
        Code.TOOL_UNKNOWN,
    ),
]


@pytest.mark.parametrize(
    ("obj", "path", "code"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_each_rule_reports_code_line_and_path(
    tmp_path: Path, obj: Any, path: str, code: Code
) -> None:
    # given: the bad conversation on line 3, after a valid line and a blank line
    file = write_jsonl(tmp_path / "d.jsonl", [VALID, "", obj])
    # when
    report = validate_path(file)
    # then
    assert not report.valid
    assert report.conversations == 2
    found = {(i.line, i.index, i.path, i.code) for i in report.errors}
    assert (3, 1, path, code.value) in found, report.errors


@pytest.mark.parametrize(
    ("obj", "path", "code"),
    [c[1:] for c in VISION_ERROR_CASES],
    ids=[c[0] for c in VISION_ERROR_CASES],
)
def test_vision_rules(tmp_path: Path, obj: Any, path: str, code: Code) -> None:
    file = write_jsonl(tmp_path / "d.jsonl", [obj])
    report = validate_path(file, vision=True)
    assert (1, path, code.value) in {(i.line, i.path, i.code) for i in report.errors}


@pytest.mark.parametrize(
    ("obj", "path", "code"), [c[1:] for c in WARNING_CASES], ids=[c[0] for c in WARNING_CASES]
)
def test_warnings_do_not_invalidate(tmp_path: Path, obj: Any, path: str, code: Code) -> None:
    file = write_jsonl(tmp_path / "d.jsonl", [obj])
    report = validate_path(file)
    assert report.valid, report.errors
    assert (1, path, code.value) in {(i.line, i.path, i.code) for i in report.warnings}


@pytest.mark.parametrize("token", SPECIAL_TOKENS)
def test_every_special_token_is_rejected(token: str) -> None:
    assert ("messages[1].content", "special_token") in codes(conv(u(), a(f"前{token}后")))


def test_system_with_tools_may_omit_content() -> None:
    assert codes(conv({"role": "system", "tools": [fn_tool()]}, u(), a())) == set()


def test_image_on_first_message_is_valid_for_vision() -> None:
    assert codes(conv({**u(), "image": "/root/images/0001.jpg"}, a()), vision=True) == set()


def test_full_tool_conversation_is_clean() -> None:
    # given: system + tools, native calls (function and python), observations, several turns
    errors, warnings = validate_conversation(FULL_TOOLS)
    assert errors == []
    assert warnings == []


def test_every_warning_code_is_declared() -> None:
    for _name, _obj, _path, code in WARNING_CASES:
        assert code in WARNING_CODES
    for _name, _obj, _path, code in ERROR_CASES + VISION_ERROR_CASES:
        assert code not in WARNING_CODES


def test_docstring_table_lists_every_code_with_its_severity() -> None:
    import trainer.validation as module

    rows = {}
    for line in (module.__doc__ or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("E", "W"):
            rows[parts[0]] = parts[1]
    assert rows == {c.value: ("W" if c in WARNING_CODES else "E") for c in Code}


def test_one_conversation_reports_all_its_errors() -> None:
    bad = conv(u(None), {"role": "tool", "content": 1}, system(), obs())
    found = codes(bad)
    assert {
        ("messages[0].content", "content_invalid"),
        ("messages[1].role", "role_invalid"),
        ("messages[1].content", "content_invalid"),
        ("messages[2].role", "system_not_first"),
        ("messages[3].role", "observation_not_after_assistant"),
        ("messages", "no_assistant_content"),
    } <= found


def test_issues_are_not_repeated() -> None:
    found = _Found()
    found.add("messages[0]", Code.ROLE_MISSING, "first")
    found.add("messages[1]", Code.ROLE_MISSING, "other path")
    found.add("messages[0]", Code.ROLE_MISSING, "again")
    assert found.unique() == [
        ("messages[0]", Code.ROLE_MISSING, "first"),
        ("messages[1]", Code.ROLE_MISSING, "other path"),
    ]
    errors, _ = validate_conversation(conv(u(None), a(None), u("<sop>"), a("<eop>")))
    keys = [(i.path, i.code) for i in errors]
    assert len(keys) == len(set(keys))


def test_deeply_nested_tool_call_content_does_not_crash() -> None:
    deep = "{" + '"a":[' * 100_000
    errors, _ = validate_conversation(conv(u(), a(deep), obs(), a()))
    assert [(i.path, i.code) for i in errors] == [
        ("messages[1].content", "observation_without_tool_call")
    ]


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


# --- the upstream README (finetune_demo/README_en.md) examples ----------------------------------

README_NO_TOOLS = {
    "messages": [
        {"role": "user", "content": "类型#裤*材质#牛仔布*风格#性感"},
        {
            "role": "assistant",
            "content": (
                "3x1的这款牛仔裤采用浅白的牛仔面料为裤身材质，其柔然的手感和细腻的质地，"
                "在穿着舒适的同时，透露着清纯甜美的个性气质。"
                "除此之外，流畅的裤身剪裁将性感的腿部曲线彰显的淋漓尽致，"
                "不失为一款随性出街的必备单品。"
            ),
        },
    ]
}

README_TOOLS = {
    "messages": [
        {
            "role": "system",
            "content": "",
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_recommended_books",
                        "description": "Get recommended books based on user's interests",
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "interests": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                    "description": "The interests to recommend books for",
                                }
                            },
                            "required": ["interests"],
                        },
                    },
                }
            ],
        },
        {
            "role": "user",
            "content": "Hi, I am looking for some book recommendations. I am interested "
            "in history and science fiction.",
        },
        {
            "role": "assistant",
            "content": '{"name": "get_recommended_books", "arguments": '
            '{"interests": ["history", "science fiction"]}}',
        },
        {
            "role": "observation",
            "content": '{"books": ["Sapiens: A Brief History of Humankind by '
            'Yuval Noah Harari", "A Brief History of Time by Stephen Hawking", "Dune by Frank '
            'Herbert", "The Martian by Andy Weir"]}',
        },
        {
            "role": "assistant",
            "content": "Based on your interests in history and science fiction, I "
            'would recommend the following books: "Sapiens: A Brief History of Humankind" by Yuval '
            'Noah Harari, "A Brief History of Time" by Stephen Hawking, "Dune" by Frank Herbert, '
            'and "The Martian" by Andy Weir.',
        },
    ]
}

README_VQA = {
    "messages": [
        {"role": "user", "content": "图片中的动物是什么？", "image": "/root/images/0001.jpg"},
        {"role": "assistant", "content": "图片中有一只猫。"},
        {"role": "user", "content": "图片中的猫在做什么？"},
        {"role": "assistant", "content": "这只猫坐在或站在桌子上，桌上有很多食物。"},
    ]
}

# The README's format skeleton, comments removed: its tools entry {"name", "args"} is not what the
# template reads (glm4-reference.md §1.3), and its "tool using" assistant turn is plain text.
README_SKELETON = {
    "messages": [
        {
            "role": "system",
            "content": "<system prompt text>",
            "tools": [{"name": "<tool name>", "args": {"<arg name>": "<arg value>"}}],
        },
        {"role": "user", "content": "<user prompt text>"},
        {"role": "assistant", "content": "<assistant response text>"},
        {"role": "user", "content": "<user prompt text>"},
        {"role": "assistant", "content": "<assistant response text>"},
        {"role": "observation", "content": "<observation prompt text>"},
        {"role": "assistant", "content": "<assistant response observation>"},
        {"role": "user", "content": "<user prompt text>"},
        {"role": "assistant", "content": "<assistant response text>"},
    ]
}


@pytest.mark.parametrize("example", [README_NO_TOOLS, README_TOOLS], ids=["no_tools", "tools"])
def test_readme_examples_pass(example: dict[str, Any]) -> None:
    assert validate_conversation(example) == ([], [])


def test_readme_vqa_example_passes_for_vision_only() -> None:
    assert validate_conversation(README_VQA, vision=True) == ([], [])
    assert ("messages[0].image", "image_not_allowed") in codes(README_VQA)


def test_readme_skeleton_is_rejected_with_hints() -> None:
    errors, _ = validate_conversation(README_SKELETON)
    assert {(i.path, i.code) for i in errors} == {
        ("messages[0].tools[0]", "tool_invalid"),
        ("messages[4].content", "observation_without_tool_call"),
    }
    assert "README skeleton" in errors[0].message


# --- agreement with the pydantic models ---------------------------------------------------------

ACCEPTED = [
    VALID,
    FULL_TOOLS,
    README_NO_TOOLS,
    README_TOOLS,
    conv({"role": "system", "tools": [fn_tool()]}, u(), a()),
]
ACCEPTED += [c[1] for c in WARNING_CASES]
STRUCTURAL = {
    "not_object",
    "messages_missing",
    "messages_not_list",
    "messages_empty",
    "message_not_object",
    "unknown_key",
    "role_missing",
    "role_tool",
    "role_list",
    "content_null",
    "content_number",
    "content_list",
    "tools_not_list",
    "tool_not_object",
    "tool_readme_skeleton",
    "tool_unknown_type",
    "tool_function_missing",
    "tool_name_empty",
    "tool_description_number",
    "tool_parameters_missing",
    "tool_parameters_type",
    "tool_properties_list",
    "tool_required_string",
    "metadata_number",
    "image_number",
}


@pytest.mark.parametrize("obj", ACCEPTED)
def test_accepted_conversations_parse_with_pydantic(obj: Any) -> None:
    errors, _ = validate_conversation(obj)
    assert errors == []
    Conversation.model_validate(obj)


def test_vqa_parses_with_pydantic() -> None:
    Conversation.model_validate(README_VQA)


@pytest.mark.parametrize(
    "case",
    [c for c in ERROR_CASES + VISION_ERROR_CASES if c[0] in STRUCTURAL],
    ids=lambda c: c[0],
)
def test_structural_errors_are_rejected_by_pydantic_too(case: tuple[str, Any, str, Code]) -> None:
    with pytest.raises(pydantic.ValidationError):
        Conversation.model_validate(case[1])


def test_import_does_not_pull_torch() -> None:
    code = (
        "import sys, trainer.validation, trainer.datafiles, trainer.conversation; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
