"""Pydantic models of the GLM-4 conversation format, for API/SDK typing and docs.

A training row is ``{"messages": [...]}`` (see the upstream GLM-4 ``finetune_demo`` README and
``docs``). These models describe the *shape* of a row: roles, field types, the tool schema and the
allowed message keys. The ordering rules (system first, observation after assistant, ...), tool-call
checks and special-token checks live in :mod:`trainer.validation`, whose hand-written walk is what
the service and the trainer actually run: it collects every problem with a JSON path and a stable
code, and costs about half of ``Conversation.model_validate`` per row. Every conversation that the
validator accepts also parses with :class:`Conversation`.

This module never imports torch or transformers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "observation"]
ROLES: frozenset[str] = frozenset(("system", "user", "assistant", "observation"))

BUILTIN_TOOL_TYPES: frozenset[str] = frozenset(("python", "simple_browser", "cogview"))
"""Non-function tool types that the GLM-4 chat template renders with a fixed description."""

MESSAGE_KEYS: frozenset[str] = frozenset(("role", "content", "tools", "metadata", "image"))
"""The only keys a message may carry; anything else is an error."""

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
)
"""The 14 GLM-4 special tokens (ids 151329..151342). The tokenizer turns their text, wherever it
appears in the rendered prompt, into the control token, so data must not contain them."""


class FunctionParameters(BaseModel):
    """JSON Schema of a function's arguments: an object schema with ``properties``."""

    model_config = ConfigDict(extra="allow")

    type: Literal["object"] = Field(description='Always "object".')
    properties: dict[str, Any] = Field(description="Argument name -> JSON Schema of the argument.")
    required: list[str] | None = Field(default=None, description="Names of required arguments.")


class FunctionSpec(BaseModel):
    """An OpenAI-style function declaration, rendered verbatim (as JSON) into the system prompt."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, description="Function name the assistant calls.")
    description: str | None = Field(
        default=None, description="What the function does; shown to the model."
    )
    parameters: FunctionParameters = Field(description="JSON Schema of the arguments.")


class FunctionTool(BaseModel):
    """``{"type": "function", "function": {...}}``."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"] = Field(description='Always "function".')
    function: FunctionSpec


class BuiltinTool(BaseModel):
    """A tool the GLM-4 template knows by type alone: ``{"type": "python"}`` etc."""

    model_config = ConfigDict(extra="allow")

    type: Literal["python", "simple_browser", "cogview"] = Field(description="Built-in tool type.")


Tool = Annotated[FunctionTool | BuiltinTool, Field(discriminator="type")]


class Message(BaseModel):
    """One turn. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    role: Role = Field(description="system (optional, first), user, assistant or observation.")
    content: str = Field(
        default="",
        description=(
            "Text of the turn. Required, except on a system message that carries tools. "
            "Empty content is omitted by the chat template."
        ),
    )
    tools: list[Tool] | None = Field(
        default=None, description="Tools available in the conversation; system message only."
    )
    metadata: str | None = Field(
        default=None,
        description=(
            "Native tool call: the called function's name (assistant only); content then holds "
            "the arguments as a JSON object."
        ),
    )
    image: str | None = Field(
        default=None, description="Absolute image path; first message only, vision models only."
    )


class Conversation(BaseModel):
    """One training row: ``{"messages": [...]}``. Unknown top-level keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    messages: list[Message] = Field(min_length=1, description="The turns, in order.")
