"""The API's resources, each in a sync and an async flavour."""

from glmft_client.resources.adapters import Adapters, AsyncAdapters
from glmft_client.resources.chat import AsyncChat, Chat
from glmft_client.resources.datasets import AsyncDatasets, Datasets
from glmft_client.resources.evaluations import AsyncEvaluations, Evaluations
from glmft_client.resources.jobs import AsyncJobs, Jobs
from glmft_client.resources.keys import AsyncKeys, AsyncTenants, Keys, Tenants
from glmft_client.resources.models import AsyncModels, Models
from glmft_client.resources.webhooks import AsyncWebhooks, Webhooks

__all__ = [
    "Adapters",
    "AsyncAdapters",
    "AsyncChat",
    "AsyncDatasets",
    "AsyncEvaluations",
    "AsyncJobs",
    "AsyncKeys",
    "AsyncModels",
    "AsyncTenants",
    "AsyncWebhooks",
    "Chat",
    "Datasets",
    "Evaluations",
    "Jobs",
    "Keys",
    "Models",
    "Tenants",
    "Webhooks",
]
