"""Dataset schemas: the stored file and its line-numbered validation report."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from api.schemas.common import UtcDatetime
from core.models import Dataset

_ISSUE_EXAMPLE: JsonDict = {
    "file": "train.jsonl",
    "line": 3,
    "index": 2,
    "path": "messages[1].role",
    "code": "role_invalid",
    "message": "role must be one of system, user, assistant, observation; got 'bot'",
}


class IssuePublic(BaseModel):
    """One problem of the file, with its position (``trainer.validation.Issue``)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ISSUE_EXAMPLE]})

    file: str
    line: int | None = Field(description="1-based line (JSONL) or the element's first line.")
    index: int | None = Field(description="0-based conversation index; null for file-level.")
    path: str = Field(description="JSON path inside the conversation, e.g. messages[2].content.")
    code: str = Field(description="Stable issue code (see trainer.validation).")
    message: str


class ReportPublic(BaseModel):
    """The validator's full report; errors make the dataset unusable, warnings do not."""

    valid: bool
    conversations: int
    errors: list[IssuePublic]
    warnings: list[IssuePublic]
    stats: dict[str, Any] = Field(
        default_factory=dict,
        description="Token statistics under the `model` given at upload (tokens, truncated, "
        "histogram: {edges, counts} of conversation lengths, ...).",
    )
    truncated: bool = Field(
        default=False, description="True when more issues existed than the report keeps."
    )


class DatasetPublic(BaseModel):
    """An uploaded dataset."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "ds-9c1f0e2d3b4a5c6d7e8f9a0b",
                    "object": "dataset",
                    "filename": "train.jsonl",
                    "bytes": 48213,
                    "sha256": "3b1f…",
                    "conversations": 120,
                    "valid": True,
                    "error_count": 0,
                    "warning_count": 1,
                    "base_model": "glm-4-9b-chat-hf",
                    "created_at": "2026-11-28T04:10:00Z",
                }
            ]
        }
    )

    id: str
    object: Literal["dataset"] = "dataset"
    filename: str
    bytes: int
    sha256: str
    conversations: int
    valid: bool = Field(description="Only a valid dataset can be used by a job.")
    error_count: int
    warning_count: int
    base_model: str | None = Field(description="The model whose tokenizer gave the stats.")
    created_at: UtcDatetime


class DatasetWithReport(DatasetPublic):
    """The upload's answer: the dataset and its full report."""

    report: ReportPublic


def dataset_public(dataset: Dataset) -> DatasetPublic:
    """The public view of a stored dataset."""
    return DatasetPublic(
        id=dataset.id,
        filename=dataset.filename,
        bytes=dataset.bytes,
        sha256=dataset.sha256,
        conversations=dataset.conversations,
        valid=dataset.valid,
        error_count=dataset.error_count,
        warning_count=int(dataset.report.get("warning_count", 0)),
        base_model=dataset.base_model,
        created_at=dataset.created_at,
    )


def report_public(dataset: Dataset) -> ReportPublic:
    """The stored report of ``dataset``."""
    return ReportPublic.model_validate(dataset.report)


def dataset_with_report(dataset: Dataset) -> DatasetWithReport:
    """The public view with the report attached."""
    public = dataset_public(dataset)
    return DatasetWithReport(**public.model_dump(), report=report_public(dataset))
