"""GLM-4's native tool calls: the model answers a call as the function name on the first line
and its JSON arguments after it, then ends the turn with ``<|observation|>``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


def tool_names(messages: Iterable[dict[str, Any]]) -> set[str]:
    """The names of the tools the system messages declare (functions and built-ins)."""
    names: set[str] = set()
    for message in messages:
        for tool in message.get("tools") or []:
            if not isinstance(tool, dict):
                continue
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("type")
            if isinstance(name, str):
                names.add(name)
    return names


def parse_tool_call(text: str, names: set[str]) -> ToolCall | None:
    """The call in ``text`` when its first line names a declared tool and the rest is a JSON
    object; ``None`` for a plain answer."""
    head, _, rest = text.strip().partition("\n")
    if head.strip() not in names:
        return None
    body = rest.strip()
    if body.startswith("```"):  # some checkpoints fence the arguments
        body = body.strip("`").removeprefix("json").strip()
    try:
        arguments = json.loads(body) if body else {}
    except ValueError:
        return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(head.strip(), arguments)
