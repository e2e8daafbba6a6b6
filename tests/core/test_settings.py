"""Settings from the environment a shell really gives: the registry forms the docs show."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHOW_MODELS = (
    "import json; from core.settings import Settings; "
    "print(json.dumps({n: [str(e.path), e.gpus] for n, e in Settings().models.items()}))"
)
#: Where the registry variables are documented for people to type or paste.
DOCUMENTS = ("README.md", "deploy/README.md", "deploy/.env.example")


def registry_from_bash(script: str) -> dict[str, list[object]]:
    """The registry a Python process sees after ``script`` ran in bash (nothing else set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMFT_")}
    proc = subprocess.run(
        ["bash", "-c", f'{script}\nexec "{sys.executable}" -c "{SHOW_MODELS}"'],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, list[object]] = json.loads(proc.stdout)
    return result


def test_the_dashed_name_is_not_a_shell_variable() -> None:
    # why the docs give another form: bash refuses this assignment
    proc = subprocess.run(
        ["bash", "-c", "export GLMFT_MODELS__glm-4-9b-chat__PATH=/models/x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and "not a valid identifier" in proc.stderr


def test_underscores_in_the_name_read_as_dashes_and_fields_merge() -> None:
    registry = registry_from_bash(
        "export GLMFT_MODELS__glm_4_9b_chat__PATH=/models/glm-4-9b-chat-hf\n"
        "export GLMFT_MODELS__glm_4_9b_chat__GPUS=1\n"
        "export GLMFT_MODELS__glm_4_tiny__PATH=/models/tiny"
    )
    assert registry == {
        "glm-4-9b-chat": ["/models/glm-4-9b-chat-hf", 1],
        "glm-4-tiny": ["/models/tiny", None],
    }


def test_the_json_form() -> None:
    registry = registry_from_bash(
        """export GLMFT_MODELS='{"glm-4-9b-chat": {"path": "/models/a", "gpus": 2}}'"""
    )
    assert registry == {"glm-4-9b-chat": ["/models/a", 2]}


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_documented_registry_line_works_in_bash(document: str) -> None:
    # given every registry assignment the document shows, as a person would paste them
    text = (REPO / document).read_text(encoding="utf-8")
    lines = [m.group(1).strip() for m in re.finditer(r"(GLMFT_MODELS\S*=[^`#\n]*)", text)]
    assert lines, f"{document} documents no registry variable"
    # when bash runs them, then each is a valid assignment and names a dashed registry entry
    registry = registry_from_bash("\n".join(f"export {line}" for line in lines))
    assert registry and all("_" not in name for name in registry), registry
    assert "glm-4-9b-chat" in registry
