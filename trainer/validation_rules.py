"""The rules of the GLM-4 conversation validator: a fast hand-written walk over one parsed
conversation (top level, each message, the system ``tools``, tool calls and observations).

:func:`find_issues` returns ``(path, code, message)`` tuples; :mod:`trainer.validation` turns
them into :class:`trainer.validation.Issue` objects, sorts errors from warnings and reads the
files. The codes and their meaning are documented there.
"""

from __future__ import annotations

import json
from typing import Any

from trainer.conversation import BUILTIN_TOOL_TYPES, MESSAGE_KEYS, ROLES, SPECIAL_TOKENS
from trainer.validation_codes import Code

# --- the walk ------------------------------------------------------------------------------------
# Hot path: a valid two-message row costs a few dict lookups and two substring tests per message;
# paths and messages are only formatted when something is wrong.

_MISSING: Any = object()
Found = list[tuple[str, Code, str]]


class _Found(list[tuple[str, Code, str]]):
    """Issues of one conversation as ``(path, code, message)``; see :meth:`unique`."""

    __slots__ = ()

    def add(self, path: str, code: Code, message: str) -> None:
        self.append((path, code, message))

    def unique(self) -> Found:
        """The issues without repeats of the same (path, code), first one kept."""
        seen: set[tuple[str, Code]] = set()
        out: Found = []
        for issue in self:
            if (issue[0], issue[1]) not in seen:
                seen.add((issue[0], issue[1]))
                out.append(issue)
        return out


def find_issues(obj: Any, vision: bool) -> Found:
    """Every issue of one parsed conversation as ``(path, code, message)``, without repeats
    of the same (path, code); empty for a valid one. ``vision`` applies the GLM-4V rules."""
    found = _Found()
    if not isinstance(obj, dict):
        found.add(
            "",
            Code.CONVERSATION_INVALID,
            f'a conversation must be an object {{"messages": [...]}}, got {_kind(obj)}',
        )
        return found
    if len(obj) != 1:
        for key in obj:
            if key != "messages":
                found.add(
                    _key_path("", key),
                    Code.CONVERSATION_KEY_UNKNOWN,
                    "unknown top-level key (ignored)",
                )
    messages = obj.get("messages", _MISSING)
    if messages is _MISSING:
        found.add(
            "messages",
            Code.MESSAGES_MISSING,
            'missing "messages": each conversation is {"messages": [...]}',
        )
    elif not isinstance(messages, list):
        found.add(
            "messages", Code.MESSAGES_INVALID, f"messages must be a list, got {_kind(messages)}"
        )
    elif not messages:
        found.add("messages", Code.MESSAGES_EMPTY, "messages must not be empty")
    else:
        _walk(messages, vision, found)
    return found.unique() if found else found


def _walk(messages: list[Any], vision: bool, found: _Found) -> None:
    tool_names: set[str] | None = None
    system_seen = has_answer = False
    prev_role: str | None = None
    last_assistant = -1
    empty: list[int] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            found.add(
                f"messages[{i}]",
                Code.MESSAGE_INVALID,
                f'a message must be an object {{"role", "content"}}, got {_kind(msg)}',
            )
            prev_role = None
            continue
        if not msg.keys() <= MESSAGE_KEYS:
            _unknown_keys(msg, i, found)
        role = msg.get("role")
        if type(role) is not str or role not in ROLES:
            _bad_role(role, i, found)
            role = None
        elif role == "system":
            _check_system(i, system_seen, vision, found)
            system_seen = True
        elif role == "observation":
            _check_observation(messages, i, prev_role, tool_names, found)
        elif role == "assistant":
            last_assistant = i
        has_tools = "tools" in msg
        if has_tools:
            names = _check_tools_key(msg["tools"], i, role, found)
            if i == 0 and names is not None:
                tool_names = names
        content = msg.get("content", _MISSING)
        if type(content) is str:
            if content:
                if role == "assistant":
                    has_answer = True
                if "<" in content or "[" in content:
                    _scan_special(content, f"messages[{i}].content", found)
            elif not (has_tools and role == "system"):
                empty.append(i)
        else:
            _bad_content(content, i, has_tools and role == "system", found)
            # a broken assistant content is reported once, not again as "no assistant content"
            has_answer = has_answer or role == "assistant"
        if "metadata" in msg and role is not None:
            _check_metadata(msg, i, role, tool_names, found)
        if "image" in msg:
            _check_image(msg["image"], i, vision, found)
        prev_role = role
    if empty or not has_answer or prev_role != "assistant":
        _check_end(empty, last_assistant, has_answer, prev_role, len(messages), found)


def _unknown_keys(msg: dict[str, Any], i: int, found: _Found) -> None:
    for key in msg:
        if key not in MESSAGE_KEYS:
            found.add(
                _key_path(f"messages[{i}]", key),
                Code.MESSAGE_KEY_UNKNOWN,
                "unknown message key (allowed: role, content, tools, metadata, image)",
            )


def _bad_content(content: Any, i: int, system_with_tools: bool, found: _Found) -> None:
    if content is not _MISSING:
        found.add(
            f"messages[{i}].content",
            Code.CONTENT_INVALID,
            f"content must be a string, got {_kind(content)}",
        )
    elif not system_with_tools:
        found.add(f"messages[{i}]", Code.CONTENT_MISSING, 'missing "content"')


def _bad_role(role: Any, i: int, found: _Found) -> None:
    if role is None:
        found.add(f"messages[{i}]", Code.ROLE_MISSING, 'missing "role"')
    else:
        found.add(
            f"messages[{i}].role",
            Code.ROLE_INVALID,
            f"role must be system, user, assistant or observation, got {_show(role)}",
        )


def _check_system(i: int, system_seen: bool, vision: bool, found: _Found) -> None:
    path = f"messages[{i}].role"
    if system_seen:
        found.add(path, Code.SYSTEM_DUPLICATE, "only one system message is allowed")
    elif i != 0:
        found.add(path, Code.SYSTEM_NOT_FIRST, "the system message must be the first message")
    if vision:
        found.add(
            path,
            Code.SYSTEM_NOT_SUPPORTED_VISION,
            "vision models (GLM-4V) support neither a system message nor tools",
        )


def _check_observation(
    messages: list[Any], i: int, prev_role: str | None, tool_names: set[str] | None, found: _Found
) -> None:
    if prev_role != "assistant":
        found.add(
            f"messages[{i}].role",
            Code.OBSERVATION_NOT_AFTER_ASSISTANT,
            f"an observation must directly follow an assistant tool call, "
            f"not {prev_role or 'nothing'}",
        )
        return
    prev = messages[i - 1]
    if "metadata" in prev:
        return  # native tool call: checked with the assistant message
    content = prev.get("content")
    call = _json_object(content) if isinstance(content, str) else None
    name = call.get("name") if call is not None else None
    path = f"messages[{i - 1}].content"
    if (
        call is None
        or not isinstance(name, str)
        or not name
        or not isinstance(call.get("arguments"), dict | str)
    ):
        found.add(
            path,
            Code.OBSERVATION_WITHOUT_TOOL_CALL,
            "an assistant message followed by an observation must be a tool call: set "
            '"metadata" to the function name and "content" to the arguments JSON, or make '
            'content {"name": ..., "arguments": {...}}',
        )
    elif tool_names is not None and name not in tool_names:
        found.add(path, Code.TOOL_UNKNOWN, f"calls {name!r}, which the system tools do not declare")


def _check_metadata(
    msg: dict[str, Any], i: int, role: str, tool_names: set[str] | None, found: _Found
) -> None:
    name = msg["metadata"]
    path = f"messages[{i}].metadata"
    if role != "assistant":
        found.add(
            path,
            Code.METADATA_NOT_ALLOWED,
            "metadata (a tool call's function name) is only allowed on assistant messages",
        )
        return
    if not isinstance(name, str) or not name.strip() or "\n" in name:
        found.add(
            path,
            Code.METADATA_INVALID,
            f"metadata must be the called function's name (one line), got {_show(name)}",
        )
        return
    if "<" in name or "[" in name:
        _scan_special(name, path, found)
    if tool_names is not None and name not in tool_names:
        found.add(path, Code.TOOL_UNKNOWN, f"calls {name!r}, which the system tools do not declare")
    content = msg.get("content")
    if name in BUILTIN_TOOL_TYPES or not isinstance(content, str):
        return  # built-in tools (python, ...) take code/text; a bad content is reported already
    if _json_object(content) is None:
        found.add(
            f"messages[{i}].content",
            Code.TOOL_CALL_ARGUMENTS_INVALID,
            "a native tool call (metadata = function name) needs content = the arguments "
            'as a JSON object, e.g. {"city": "Beijing"}',
        )


def _check_image(image: Any, i: int, vision: bool, found: _Found) -> None:
    path = f"messages[{i}].image"
    if not vision:
        found.add(
            path, Code.IMAGE_NOT_ALLOWED, "image is only allowed for vision models (--vision)"
        )
    elif i != 0:
        found.add(path, Code.IMAGE_NOT_FIRST, "image is only allowed on the first message")
    elif not isinstance(image, str) or not image:
        found.add(path, Code.IMAGE_INVALID, f"image must be a file path, got {_show(image)}")


def _check_end(
    empty: list[int],
    last_assistant: int,
    has_answer: bool,
    last_role: str | None,
    n: int,
    found: _Found,
) -> None:
    if not has_answer:
        found.add(
            "messages",
            Code.NO_ASSISTANT_CONTENT,
            "no assistant message with non-empty content: nothing to train on "
            "(combine mode fails with '151337 is not in list')",
        )
    for i in empty:
        if i == last_assistant and has_answer:
            found.add(
                f"messages[{i}].content",
                Code.LAST_ASSISTANT_EMPTY,
                "the last assistant message is empty, so combine mode trains an earlier turn",
            )
        else:
            found.add(
                f"messages[{i}].content",
                Code.CONTENT_EMPTY,
                "empty content: the chat template drops this message",
            )
    if has_answer and last_role is not None and last_role != "assistant":
        found.add(
            f"messages[{n - 1}]",
            Code.TRAILING_MESSAGES,
            f"the conversation ends with {last_role}: combine mode trains every token after "
            "the last assistant turn, this one included",
        )


def _check_tools_key(tools: Any, i: int, role: str | None, found: _Found) -> set[str] | None:
    if role != "system":
        if role is not None:
            found.add(
                f"messages[{i}].tools",
                Code.TOOLS_NOT_ON_SYSTEM,
                "tools are only allowed on the system message: put them on a first message "
                '{"role": "system", "content": "", "tools": [...]}',
            )
        return None
    path = f"messages[{i}].tools"
    if not isinstance(tools, list):
        found.add(path, Code.TOOLS_INVALID, f"tools must be a list, got {_kind(tools)}")
        return None
    if not tools:
        found.add(path, Code.TOOLS_EMPTY, "tools is an empty list")
    names: set[str] = set()
    for j, tool in enumerate(tools):
        name = _check_tool(tool, f"{path}[{j}]", found)
        if name is not None:
            if name in names:
                found.add(
                    f"{path}[{j}].function.name",
                    Code.TOOL_NAME_DUPLICATE,
                    f"tool {name!r} is declared twice",
                )
            names.add(name)
    return names


def _check_tool(tool: Any, path: str, found: _Found) -> str | None:
    if not isinstance(tool, dict):
        found.add(path, Code.TOOL_INVALID, f"a tool must be an object, got {_kind(tool)}")
        return None
    kind = tool.get("type")
    if isinstance(kind, str) and kind in BUILTIN_TOOL_TYPES:
        return kind
    if kind != "function":
        hint = ' (the README skeleton {"name", "args"} is not what the template reads)'
        found.add(
            path,
            Code.TOOL_INVALID,
            f'tool type must be "function", "python", "simple_browser" or "cogview", got '
            f'{_show(kind)}; use {{"type": "function", "function": {{"name", "description", '
            f'"parameters"}}}}' + (hint if "name" in tool else ""),
        )
        return None
    function = tool.get("function")
    if not isinstance(function, dict):
        found.add(
            f"{path}.function",
            Code.TOOL_FUNCTION_INVALID,
            f"function must be an object, got {_kind(function)}",
        )
        return None
    return _check_function(function, f"{path}.function", found)


def _check_function(function: dict[str, Any], path: str, found: _Found) -> str | None:
    name = function.get("name")
    valid_name = isinstance(name, str) and bool(name)
    if not valid_name:
        found.add(
            f"{path}.name",
            Code.TOOL_NAME_INVALID,
            f"function name must be a non-empty string, got {_show(name)}",
        )
    description = function.get("description", _MISSING)
    if description is _MISSING:
        found.add(path, Code.TOOL_DESCRIPTION_MISSING, "function has no description")
    elif not isinstance(description, str):
        found.add(
            f"{path}.description",
            Code.TOOL_DESCRIPTION_INVALID,
            f"description must be a string, got {_kind(description)}",
        )
    _check_parameters(function.get("parameters", _MISSING), f"{path}.parameters", found)
    try:
        text = json.dumps(function, ensure_ascii=False)
    except (ValueError, RecursionError):  # pathological nesting: nothing sensible to scan
        text = ""
    if "<" in text or "[" in text:
        _scan_special(text, path, found)
    return name if valid_name else None


def _check_parameters(params: Any, path: str, found: _Found) -> None:
    if not isinstance(params, dict):
        got = "nothing" if params is _MISSING else _kind(params)
        found.add(
            path,
            Code.TOOL_PARAMETERS_INVALID,
            f'parameters must be {{"type": "object", "properties": {{...}}}}, got {got}',
        )
        return
    if params.get("type") != "object":
        found.add(
            f"{path}.type",
            Code.TOOL_PARAMETERS_INVALID,
            f'parameters type must be "object", got {_show(params.get("type"))}',
        )
    if not isinstance(params.get("properties"), dict):
        found.add(
            f"{path}.properties",
            Code.TOOL_PARAMETERS_INVALID,
            "properties must be an object mapping argument names to JSON Schemas",
        )
    required = params.get("required", _MISSING)
    if required is not _MISSING and not (
        isinstance(required, list) and all(isinstance(r, str) for r in required)
    ):
        found.add(
            f"{path}.required",
            Code.TOOL_PARAMETERS_INVALID,
            "required must be a list of argument names",
        )


def _scan_special(text: str, path: str, found: _Found) -> None:
    hits = [token for token in SPECIAL_TOKENS if token in text]
    if hits:
        found.add(
            path,
            Code.SPECIAL_TOKEN,
            f"contains special-token text {', '.join(hits)}; the tokenizer would read it as "
            "a control token",
        )


def _json_object(text: str) -> dict[str, Any] | None:
    if not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _key_path(base: str, key: str) -> str:
    part = f".{key}" if key.isidentifier() else f"[{json.dumps(key, ensure_ascii=False)}]"
    return f"{base}{part}" if base or not part.startswith(".") else key


_KINDS = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "list",
    dict: "object",
}


def _kind(value: Any) -> str:
    return "nothing" if value is _MISSING else _KINDS.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    if value is _MISSING or value is None or isinstance(value, list | dict):
        return _kind(value)
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
