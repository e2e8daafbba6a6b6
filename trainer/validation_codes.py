"""Issue codes of the conversation validator, shared by :mod:`trainer.validation` and
:mod:`trainer.validation_rules`.

The table of codes, their severity and meaning is the docstring of :mod:`trainer.validation`
(which re-exports :class:`Code` and :data:`WARNING_CODES`).
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """Stable issue codes; :mod:`trainer.validation` documents each with its severity."""

    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    FILE_EMPTY = "file_empty"
    CONVERSATION_INVALID = "conversation_invalid"
    CONVERSATION_KEY_UNKNOWN = "conversation_key_unknown"
    MESSAGES_MISSING = "messages_missing"
    MESSAGES_INVALID = "messages_invalid"
    MESSAGES_EMPTY = "messages_empty"
    MESSAGE_INVALID = "message_invalid"
    MESSAGE_KEY_UNKNOWN = "message_key_unknown"
    ROLE_MISSING = "role_missing"
    ROLE_INVALID = "role_invalid"
    SYSTEM_NOT_FIRST = "system_not_first"
    SYSTEM_DUPLICATE = "system_duplicate"
    SYSTEM_NOT_SUPPORTED_VISION = "system_not_supported_vision"
    CONTENT_MISSING = "content_missing"
    CONTENT_INVALID = "content_invalid"
    CONTENT_EMPTY = "content_empty"
    SPECIAL_TOKEN = "special_token"
    NO_ASSISTANT_CONTENT = "no_assistant_content"
    LAST_ASSISTANT_EMPTY = "last_assistant_empty"
    TRAILING_MESSAGES = "trailing_messages"
    OBSERVATION_NOT_AFTER_ASSISTANT = "observation_not_after_assistant"
    OBSERVATION_WITHOUT_TOOL_CALL = "observation_without_tool_call"
    TOOLS_NOT_ON_SYSTEM = "tools_not_on_system"
    TOOLS_INVALID = "tools_invalid"
    TOOLS_EMPTY = "tools_empty"
    TOOL_INVALID = "tool_invalid"
    TOOL_FUNCTION_INVALID = "tool_function_invalid"
    TOOL_NAME_INVALID = "tool_name_invalid"
    TOOL_NAME_DUPLICATE = "tool_name_duplicate"
    TOOL_DESCRIPTION_INVALID = "tool_description_invalid"
    TOOL_DESCRIPTION_MISSING = "tool_description_missing"
    TOOL_PARAMETERS_INVALID = "tool_parameters_invalid"
    METADATA_NOT_ALLOWED = "metadata_not_allowed"
    METADATA_INVALID = "metadata_invalid"
    TOOL_CALL_ARGUMENTS_INVALID = "tool_call_arguments_invalid"
    TOOL_UNKNOWN = "tool_unknown"
    IMAGE_NOT_ALLOWED = "image_not_allowed"
    IMAGE_NOT_FIRST = "image_not_first"
    IMAGE_INVALID = "image_invalid"
    IMAGE_NOT_FOUND = "image_not_found"
    IMAGE_PATH_INVALID = "image_path_invalid"
    IMAGE_UNREADABLE = "image_unreadable"
    IMAGE_TOO_LARGE = "image_too_large"


WARNING_CODES: frozenset[Code] = frozenset(
    {
        Code.CONVERSATION_KEY_UNKNOWN,
        Code.CONTENT_EMPTY,
        Code.LAST_ASSISTANT_EMPTY,
        Code.TRAILING_MESSAGES,
        Code.TOOLS_EMPTY,
        Code.TOOL_DESCRIPTION_MISSING,
        Code.TOOL_UNKNOWN,
    }
)
