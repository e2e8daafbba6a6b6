"""The glmft SDK: ``Client`` / ``AsyncClient`` over the glmft API (httpx and pydantic only).

from glmft_client import Client

with Client() as client:  # GLMFT_BASE_URL, GLMFT_API_KEY
    dataset = client.datasets.upload("data/train.jsonl")
    job = client.jobs.create(model="glm-4-9b-chat", method="lora",
                             training_dataset=dataset.id)
    job = client.jobs.wait(job.id, timeout=3600)
    print(job.adapter_id)
"""

from glmft_client._client import AsyncClient, Client
from glmft_client._http import VERSION
from glmft_client.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APIStreamError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    GlmftError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    WaitTimeoutError,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APIStreamError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "GlmftError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "WaitTimeoutError",
    "__version__",
]

__version__ = VERSION
