"""Shared trainer fixtures: a tiny random GLM-4 model built once per test session, offline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# Nothing in the trainer tests may reach the network; set before transformers is imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a tiny ``GlmForCausalLM`` + GLM-4-style tokenizer (hidden 64, 2 layers).

    Shared by the whole session: treat it as read-only (copy it before modifying anything).
    """
    from trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_glm4"), seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    """The tokenizer of ``tiny_model_dir``, loaded with ``AutoTokenizer`` (do not mutate)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
