"""One error vocabulary for the API, the workers and the SDK: a stable code and an HTTP status."""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    """Base of every error glmft reports to a caller."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500

    def __init__(
        self, message: str, *, param: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.param is not None:
            body["param"] = self.param
        if self.details:
            body["details"] = self.details
        return body


class NotFound(AppError):
    code = "not_found"
    http_status = 404


class DatasetNotFound(NotFound):
    code = "dataset_not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class AdapterNotFound(NotFound):
    code = "adapter_not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class CheckpointNotFound(NotFound):
    code = "checkpoint_not_found"


class EvaluationNotFound(NotFound):
    code = "evaluation_not_found"


class Unauthorized(AppError):
    """No or an unknown API key while keys are configured."""

    code = "unauthorized"
    http_status = 401
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class Conflict(AppError):
    code = "conflict"
    http_status = 409


class InvalidJobTransition(Conflict):
    code = "invalid_job_transition"


class InvalidEvaluationTransition(Conflict):
    code = "invalid_evaluation_transition"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"


class DatasetInUse(Conflict):
    """A dataset a job may still train on (one that has not succeeded): it cannot be deleted."""

    code = "dataset_in_use"


class JobStillStopping(Conflict):
    """A paused job whose trainer has not stopped yet: it cannot be resumed until it has."""

    code = "job_still_stopping"


class Invalid(AppError):
    code = "invalid_request"
    http_status = 422


class InvalidDataset(Invalid):
    code = "invalid_dataset"


class InvalidArchive(Invalid):
    """A dataset archive that is unsafe or malformed (links, paths leaving it, non-images)."""

    code = "invalid_archive"


class UnsupportedModel(Invalid):
    """A base model this job cannot train (untrusted remote code, a layout glmft cannot train)."""

    code = "unsupported_model"


class InvalidConfig(Invalid):
    code = "invalid_config"


class InsufficientCapacity(Invalid):
    code = "insufficient_capacity"


class PayloadTooLarge(AppError):
    code = "payload_too_large"
    http_status = 413


class Unavailable(AppError):
    code = "unavailable"
    http_status = 503


class InvalidMessages(Invalid):
    """A chat request whose messages break the GLM-4 conversation rules."""

    code = "invalid_messages"


class PromptTooLong(Invalid):
    code = "prompt_too_long"


class ModelUnavailable(Conflict):
    """The model exists but this server cannot serve it (its base is not configured here)."""

    code = "model_unavailable"


class AdapterBusy(Conflict):
    code = "adapter_busy"


class ChatCapacity(AppError):
    """Every model or adapter slot is pinned or busy: retry later."""

    code = "chat_capacity"
    http_status = 503
    headers: ClassVar[dict[str, str]] = {"Retry-After": "5"}


class GenerationFailed(AppError):
    """The engine could not answer (an adapter that fails to load, out of memory...)."""

    code = "generation_failed"
    http_status = 500


class ChatUnavailable(Unavailable):
    """The chat replica this API forwards to cannot be reached."""

    code = "chat_unavailable"
