"""Shared data for the validator tests: message builders, sample conversations, rule cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.validation import Code, validate_conversation

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
