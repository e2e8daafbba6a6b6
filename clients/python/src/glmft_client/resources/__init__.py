"""The API's resources, each in a sync and an async flavour."""

from glmft_client.resources.adapters import Adapters, AsyncAdapters
from glmft_client.resources.chat import AsyncChat, Chat
from glmft_client.resources.datasets import AsyncDatasets, Datasets
from glmft_client.resources.evaluations import AsyncEvaluations, Evaluations
from glmft_client.resources.jobs import AsyncJobs, Jobs
from glmft_client.resources.models import AsyncModels, Models

__all__ = [
    "Adapters",
    "AsyncAdapters",
    "AsyncChat",
    "AsyncDatasets",
    "AsyncEvaluations",
    "AsyncJobs",
    "AsyncModels",
    "Chat",
    "Datasets",
    "Evaluations",
    "Jobs",
    "Models",
]
