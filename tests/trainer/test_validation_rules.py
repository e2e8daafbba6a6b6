"""The GLM-4 conversation validator: one test per rule, README examples, pydantic agreement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest

from tests.trainer.validation_examples import (
    ERROR_CASES,
    FULL_TOOLS,
    VALID,
    VISION_ERROR_CASES,
    WARNING_CASES,
    a,
    codes,
    conv,
    fn_tool,
    obs,
    system,
    u,
    write_jsonl,
)
from trainer.conversation import SPECIAL_TOKENS, Conversation
from trainer.validation import (
    WARNING_CODES,
    Code,
    _Found,
    validate_conversation,
    validate_path,
)


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
