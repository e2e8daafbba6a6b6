"""Import boundaries of ARCHITECTURE.md, checked on the source (an import-linter equivalent)."""

from __future__ import annotations

import ast
import subprocess
import sys
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


ML_STACK = {"torch", "transformers", "peft", "deepspeed"}
CONTRACT = REPO / "trainer" / "contract"
# the run contract's names: no other module spells them (trainer.contract.layout)
CONTRACT_NAMES = ('"trainer.log"', '"events.jsonl"', '"config.yaml"', '"trainer.lock"')


def test_the_run_contract_imports_no_torch_anywhere() -> None:
    # given every module of the contract, imports inside functions included
    modules = sorted(CONTRACT.glob("*.py"))
    assert len(modules) >= 4
    # then none imports the ML stack
    for path in modules:
        assert not top_level_imports(path) & ML_STACK, path.name
    # and importing the whole contract in a fresh interpreter loads none of it
    probe = (
        "import sys\n"
        "import trainer.contract\n"
        "print(','.join(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("package", ["api", "core", "worker", "trainer", "serving"])
def test_job_directory_file_names_come_from_the_contract(package: str) -> None:
    # given every source file outside the contract
    spelled = [
        f"{path.relative_to(REPO)} spells {name}"
        for path in sources(package)
        if not path.is_relative_to(CONTRACT) and "migrations" not in path.parts
        for name in CONTRACT_NAMES
        if name in path.read_text(encoding="utf-8")
    ]
    # then none spells a job directory file name: each takes it from trainer.contract.layout
    assert spelled == []


@pytest.mark.parametrize("package", ["api", "core", "worker"])
def test_the_service_reads_trainer_events_only_through_the_contract(package: str) -> None:
    # an event matched by its kind string ("event") instead of its model
    matched = [
        str(path.relative_to(REPO))
        for path in sources(package)
        if 'get("event")' in path.read_text(encoding="utf-8")
        or '["event"]' in path.read_text(encoding="utf-8")
    ]
    assert matched == []


def test_the_api_loads_no_torch_until_it_serves_chat_itself() -> None:
    # given a fresh interpreter
    probe = (
        "import sys\n"
        "from api.main import create_app\n"
        "create_app()\n"
        "stack = ('torch', 'transformers', 'peft', 'safetensors')\n"
        "print(','.join(m for m in stack if m in sys.modules))\n"
    )
    # when the app is built (routes, services, settings: everything but a chat engine)
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=False
    )
    # then none of the ML stack was imported
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ""
