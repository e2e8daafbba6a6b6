"""GLM-4 conversation validator: a fast hand-written walk that collects every problem of a file.

This module holds the public API (reports, file and record validation, iteration); the walk
and its rules live in :mod:`trainer.validation_rules`, the codes in
:mod:`trainer.validation_codes` (:class:`Code` and :data:`WARNING_CODES` are re-exported here).

Each problem is an :class:`Issue` with the file, the 1-based ``line`` (JSONL; the element's first
line for ``.json``), the 0-based ``index`` (conversation ordinal / array index), a JSON ``path``
inside the conversation (``messages[2].content``), a stable ``code`` (:class:`Code`) and a plain
``message``. Errors make the file invalid; warnings do not. The pydantic models in
:mod:`trainer.conversation` describe the same format for typing and docs; every conversation
accepted here also parses with :class:`trainer.conversation.Conversation`.

Error codes (severity ``E`` error, ``W`` warning):

=================================  ==  =====================================================
code                               sv  meaning
=================================  ==  =====================================================
invalid_json                       E   a line / file is not valid JSON
invalid_utf8                       E   bytes that are not UTF-8
file_empty                         E   a data file holds no conversation
conversation_invalid               E   a conversation is not a JSON object
conversation_key_unknown           W   top-level key other than ``messages`` (ignored)
messages_missing                   E   no ``messages`` key
messages_invalid                   E   ``messages`` is not a list
messages_empty                     E   ``messages`` is an empty list
message_invalid                    E   a message is not a JSON object
message_key_unknown                E   message key outside role/content/tools/metadata/image
role_missing                       E   message without ``role``
role_invalid                       E   role not in system/user/assistant/observation
system_not_first                   E   the system message is not the first message
system_duplicate                   E   more than one system message
system_not_supported_vision        E   system message (and so tools) with ``vision=True``
content_missing                    E   no ``content`` (allowed only on a system with tools)
content_invalid                    E   ``content`` is not a string (null, number, list, ...)
content_empty                      W   empty content: the chat template omits the message
special_token                      E   special-token text (``<|user|>``, ``[gMASK]``, ...)
no_assistant_content               E   no assistant message with non-empty content
last_assistant_empty               W   the last assistant message is empty (combine mode
                                       trains only the last turn)
trailing_messages                  W   messages after the last assistant: combine mode
                                       trains them as part of the answer
observation_not_after_assistant    E   observation not right after an assistant message
observation_without_tool_call      E   assistant before an observation is not a tool call
tools_not_on_system                E   ``tools`` on a non-system message
tools_invalid                      E   ``tools`` is not a list
tools_empty                        W   ``tools`` is an empty list
tool_invalid                       E   tool not an object / unknown or missing ``type``
tool_function_invalid              E   ``function`` missing or not an object
tool_name_invalid                  E   function name missing, empty or not a string
tool_name_duplicate                E   two tools declare the same function name
tool_description_invalid           E   description present but not a string
tool_description_missing           W   function without description
tool_parameters_invalid            E   parameters not ``{"type": "object", "properties": {}}``
metadata_not_allowed               E   ``metadata`` on a non-assistant message
metadata_invalid                   E   metadata not a non-empty single-line string
tool_call_arguments_invalid        E   native call (metadata) whose content is not a JSON object
tool_unknown                       W   called tool not declared in the system tools
image_not_allowed                  E   ``image`` without ``vision=True``
image_not_first                    E   ``image`` on a message other than the first
image_invalid                      E   ``image`` not a non-empty string
image_not_found                    E   the image file does not exist (``images`` checks on)
image_path_invalid                 E   absolute image path, or one leaving the data's root,
                                       where paths are confined (uploaded archives)
image_unreadable                   E   the file is not a PNG/JPEG/WEBP/GIF/BMP image
image_too_large                    E   the image declares more pixels than the limit
=================================  ==  =====================================================

Decisions: unknown *message* keys are errors (the template would ignore them, so they are
almost always a typo or a foreign format), unknown *top-level* keys are warnings. ``null`` in
``tools``/``metadata``/``image`` is an error, never "absent" (Arrow/pandas exports write them; the
template would render ``None``). Tool calls come in two accepted styles: native (assistant
``metadata`` = function name, ``content`` = arguments JSON object; built-in tools ``python``,
``simple_browser``, ``cogview`` take free text) and the upstream README's (``content`` =
``{"name": ..., "arguments": {...}}``, checked when an observation follows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainer.datafiles import RawRecord, ReadError, is_jsonl, iter_records
from trainer.images import ImageCheck
from trainer.validation_codes import WARNING_CODES, Code
from trainer.validation_rules import Found, find_issues
from trainer.validation_rules import _Found as _Found  # re-exported for the tests

__all__ = [
    "WARNING_CODES",
    "Code",
    "ConversationRecord",
    "DataValidationError",
    "Issue",
    "OnConversation",
    "ValidationReport",
    "iter_conversations",
    "validate_conversation",
    "validate_path",
    "validate_records",
]


_READ_ERROR_CODES = {"json": Code.INVALID_JSON, "utf8": Code.INVALID_UTF8, "empty": Code.FILE_EMPTY}

OnConversation = Callable[[list[dict[str, Any]], int], None]


@dataclass(slots=True)
class Issue:
    """One error or warning. ``index`` is ``None`` only for a file-level issue (``file_empty``,
    undecodable or trailing-garbage ``.json``); ``path`` is ``""`` when it is not inside a
    conversation."""

    file: str
    line: int | None
    index: int | None
    path: str
    code: str
    message: str

    @property
    def location(self) -> str:
        """``FILE:LINE`` for JSONL, ``FILE:[INDEX]`` for ``.json`` (``FILE`` if neither)."""
        if is_jsonl(self.file) and self.line is not None:
            return f"{self.file}:{self.line}"
        if self.index is not None:
            return f"{self.file}:[{self.index}]"
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class ValidationReport:
    """Outcome of validating a file or data directory. ``stats`` is filled by the caller."""

    valid: bool = True
    conversations: int = 0
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "conversations": self.conversations,
            "errors": [i.to_dict() for i in self.errors],
            "warnings": [i.to_dict() for i in self.warnings],
            "stats": self.stats,
        }


@dataclass(slots=True)
class ConversationRecord:
    """A valid conversation with its position (see :class:`Issue` for ``line``/``index``)."""

    file: str
    line: int | None
    index: int
    obj: dict[str, Any]


class DataValidationError(ValueError):
    """Raised by :func:`iter_conversations` (strict) at the first invalid conversation."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        first = issues[0]
        super().__init__(f"{first.location}: {first.path or '<conversation>'}: {first.message}")


def validate_conversation(
    obj: Any, *, vision: bool = False, file: str = "", line: int | None = None, index: int = 0
) -> tuple[list[Issue], list[Issue]]:
    """Check one parsed conversation; return ``(errors, warnings)``."""
    found = find_issues(obj, vision)
    return _to_issues(found, file, line, index) if found else ([], [])


def _to_issues(
    found: Found, file: str, line: int | None, index: int
) -> tuple[list[Issue], list[Issue]]:
    errors: list[Issue] = []
    warnings: list[Issue] = []
    for path, code, message in found:
        issue = Issue(file, line, index, path, code.value, message)
        (warnings if code in WARNING_CODES else errors).append(issue)
    return errors, warnings


def validate_records(
    records: Iterable[RawRecord],
    *,
    vision: bool = False,
    on_conversation: OnConversation | None = None,
    images: ImageCheck | None = None,
) -> ValidationReport:
    """Validate already-read records (see :func:`trainer.datafiles.iter_records`); with
    ``images`` (vision data) each conversation's image file is checked too."""
    report = ValidationReport()
    for rec in records:  # the hot loop: no per-row allocation beyond the check itself
        if rec.error is not None:
            if rec.index is not None:
                report.conversations += 1
            report.errors.append(_read_issue(rec, rec.error))
            continue
        report.conversations += 1
        found = find_issues(rec.value, vision)
        if images is not None and not found:
            found = _image_issues(rec, images)
        if found:
            errors, warnings = _to_issues(found, rec.file, rec.line, rec.index or 0)
            report.errors.extend(errors)
            report.warnings.extend(warnings)
            if errors:
                continue
        if on_conversation is not None:
            on_conversation(rec.value["messages"], _locator(rec))
    report.valid = not report.errors
    return report


def validate_path(
    path: str | Path,
    *,
    vision: bool = False,
    on_conversation: OnConversation | None = None,
    images: ImageCheck | None = None,
) -> ValidationReport:
    """Validate a ``.jsonl``/``.json`` file or a data dir; collect every error and warning.

    ``on_conversation(messages, line_or_index)`` is called for each valid conversation: with its
    line for JSONL, its array index for ``.json``. ``images`` checks each conversation's image
    file (:class:`trainer.images.ImageCheck`; relative paths from the data file's directory).
    Raises :class:`trainer.datafiles.DataFileError` when the input cannot be read at all
    (missing, unsupported suffix, no data file in dir).
    """
    return validate_records(
        iter_records(path), vision=vision, on_conversation=on_conversation, images=images
    )


def _image_issues(rec: RawRecord, images: ImageCheck) -> Found:
    image = rec.value["messages"][0].get("image")
    if image is None:
        return []
    problem = images.problem(image, rec.file)
    return [] if problem is None else [("messages[0].image", problem.code, str(problem))]


def iter_conversations(
    path: str | Path, *, vision: bool = False, strict: bool = True
) -> Iterator[ConversationRecord]:
    """Yield the valid conversations behind ``path`` with their positions.

    With ``strict`` (the default) an invalid conversation raises :class:`DataValidationError`
    (after the valid ones before it were yielded); otherwise invalid ones are skipped.
    """
    for rec, errors, _warnings in _checked(iter_records(path), vision):
        if errors:
            if strict:
                raise DataValidationError(errors)
            continue
        yield ConversationRecord(rec.file, rec.line, rec.index or 0, rec.value)


def _checked(
    records: Iterable[RawRecord], vision: bool
) -> Iterator[tuple[RawRecord, list[Issue], list[Issue]]]:
    for rec in records:
        if rec.error is not None:
            yield rec, [_read_issue(rec, rec.error)], []
            continue
        found = find_issues(rec.value, vision)
        if found:
            errors, warnings = _to_issues(found, rec.file, rec.line, rec.index or 0)
            yield rec, errors, warnings
        else:
            yield rec, [], []


def _read_issue(rec: RawRecord, error: ReadError) -> Issue:
    code = _READ_ERROR_CODES[error.kind]
    return Issue(rec.file, rec.line, rec.index, "", code.value, error.message)


def _locator(rec: RawRecord) -> int:
    if is_jsonl(rec.file) and rec.line is not None:
        return rec.line
    return rec.index or 0
