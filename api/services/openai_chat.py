"""OpenAI chat messages to GLM-4's and a glmft answer to OpenAI's ``chat.completion``.

GLM-4 writes a tool call natively as an assistant turn whose ``metadata`` is the function name
and whose content is the arguments' JSON, and a tool's result as an ``observation`` turn.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from api.schemas.chat import ChatResponse
from api.schemas.openai_chat import ChatCompletion, ChatMessage
from core.errors import InvalidMessages

_ROLES = {"system": "system", "developer": "system", "user": "user", "tool": "observation"}


def glm_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The GLM-4 conversation of an OpenAI message list."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if message.role == "assistant" and message.tool_calls:
            if message.content:
                out.append({"role": "assistant", "content": _text(message.content, i)})
            for call in message.tool_calls:
                out.append(
                    {
                        "role": "assistant",
                        "metadata": call.function.name,
                        "content": call.function.arguments,
                    }
                )
            continue
        role = _ROLES.get(message.role, message.role)
        out.append({"role": role, "content": _content(message.content, i)})
    return out


def _content(content: str | list[dict[str, Any]] | None, index: int) -> Any:
    """The text of ``content``; a list with an ``image_url`` part stays a list of parts (the
    chat service reads images: api.services.vision_chat)."""
    if isinstance(content, list) and any(p.get("type") == "image_url" for p in content):
        return content
    return _text(content, index)


def _text(content: str | list[dict[str, Any]] | None, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for j, part in enumerate(content):
        if part.get("type") != "text":
            raise InvalidMessages(
                f"messages[{index}].content[{j}]: only text parts are supported, got "
                f"{part.get('type')!r}",
                param=f"messages[{index}].content[{j}]",
            )
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def completion_of(answer: ChatResponse, completion_id: str, created: int) -> ChatCompletion:
    call = answer.message.tool_call
    message: dict[str, Any] = {"content": answer.message.content}
    if call is not None:
        message = {
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{uuid.uuid4().hex[:24]}",
                    "function": {
                        "name": call.name,
                        "arguments": json.dumps(call.arguments, ensure_ascii=False),
                    },
                }
            ],
        }
    finish = "tool_calls" if call is not None else answer.finish_reason
    return ChatCompletion.model_validate(
        {
            "id": completion_id,
            "created": created,
            "model": answer.model,
            "choices": [{"message": message, "finish_reason": finish}],
            "usage": answer.usage.model_dump(),
        }
    )
