"""Import boundaries of ARCHITECTURE.md, checked on the source (an import-linter equivalent)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"trainer", "serving", "core", "api", "worker", "glmft_client"}
# package -> first-party packages it may import (ARCHITECTURE.md, "The boxes")
ALLOWED = {
    "trainer": {"trainer"},
    "serving": {"serving", "trainer"},
    "core": {"core", "trainer"},
    "api": {"api", "core", "trainer", "serving"},
    "worker": {"worker", "core", "trainer"},
    "clients": {"glmft_client"},
}
# modules that may import one more first-party package, only inside functions (never at import)
LAZY = {"trainer/generation.py": {"serving"}}  # eval-with-generation through the serving engine
# third-party packages a box must never import
FORBIDDEN_THIRD_PARTY = {
    "trainer": {"fastapi", "celery", "sqlmodel", "sqlalchemy", "redis"},
    "serving": {"fastapi", "celery", "sqlmodel", "sqlalchemy", "redis"},
    "core": {"fastapi", "celery", "torch", "transformers", "peft"},
    "clients": {"torch", "transformers", "fastapi", "celery"},
}
# trainer modules the service imports: they must not import torch at module level
TORCH_FREE = [
    "conversation",
    "datafiles",
    "validation",
    "validation_codes",
    "validation_rules",
    "config",
    "hf_fields",
    "template",
    "checkpoints",
    "events",
    "images",
    "vision",
    "model_fit",
]


def top_level_imports(path: Path, *, module_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py")) if (REPO / package).is_dir() else []


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_architecture_allows(package: str) -> None:
    violations = []
    for path in sources(package):
        imported = top_level_imports(path)
        lazy = LAZY.get(str(path.relative_to(REPO)), set())
        bad = (imported & FIRST_PARTY) - ALLOWED[package] - lazy
        bad |= top_level_imports(path, module_level_only=True) & lazy
        bad |= imported & FORBIDDEN_THIRD_PARTY.get(package, set())
        violations += [f"{path.relative_to(REPO)} imports {name}" for name in sorted(bad)]
    assert violations == []


def test_trainer_package_is_not_empty() -> None:
    # guards the check above against silently scanning nothing
    assert len(sources("trainer")) > 10


@pytest.mark.parametrize("module", TORCH_FREE)
def test_service_facing_trainer_modules_do_not_import_torch(module: str) -> None:
    imported = top_level_imports(REPO / "trainer" / f"{module}.py", module_level_only=True)
    assert not imported & {"torch", "transformers", "peft", "deepspeed"}
