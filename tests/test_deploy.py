"""Static checks of docker-compose.yml, deploy/docker, deploy/k8s and deploy/.env.example.

No Docker engine or cluster runs here, so these checks are the test: the files parse, name the
services and settings the code reads (every ``GLMFT_`` name is a field of
``core.settings.Settings``), point at real entry points and copy files that exist.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel
from ruamel.yaml import YAML

from core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s" / "base"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
PREFIX = "GLMFT_"
SERVICES = {"api", "worker", "beat", "migrate", "postgres", "redis"}
# ${NAME}, ${NAME:-default}, ${NAME:?message}; "$${NAME}" is an escaped literal, not a variable.
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
ENV_LINE = re.compile(r"^\s*#?\s*(?:export\s+)?(?P<name>[A-Za-z_][\w.\-]*)=", re.MULTILINE)

API_COMMAND = ["uvicorn", "--factory", "api.main:create_app"]
WORKER_COMMAND = ["celery", "-A", "worker", "worker"]
BEAT_COMMAND = ["celery", "-A", "worker", "beat"]
MIGRATE_COMMAND = ["python", "-m", "core.migrate"]
# Stand-ins for the variables compose requires (``${NAME:?...}``) when its settings are parsed.
REQUIRED_SAMPLES = {"GLMFT_API_KEYS": '{"sample-key": "team-a"}'}


# ---- helpers ------------------------------------------------------------------------------------


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in YAML(typ="safe").load_all(path.read_text()) if doc is not None]


def _model(tp: Any) -> type[BaseModel] | None:
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _setting_patterns() -> tuple[list[re.Pattern[str]], list[re.Pattern[str]]]:
    """(every env name a Settings field accepts, the leaf names that .env.example must document).

    ``GLMFT_<FIELD>``; a nested model also as ``GLMFT_<FIELD>__<SUB>``; a dict of models (the base
    model registry) also as ``GLMFT_<FIELD>__<any name>__<SUB>``; any other dict also as
    ``GLMFT_<FIELD>__<key>``. Matching is case-insensitive, as pydantic-settings reads the
    environment.
    """
    valid: list[str] = []
    leaves: list[str] = []
    for name, field in Settings.model_fields.items():
        env = re.escape(PREFIX + name.upper())
        valid.append(env)
        nested = _model(field.annotation)
        args = get_args(field.annotation)
        entry = _model(args[1]) if get_origin(field.annotation) is dict and len(args) == 2 else None
        if nested is not None:
            subs = [f"{env}__{sub.upper()}" for sub in nested.model_fields]
            valid += subs
            leaves += subs
        elif entry is not None:
            alternatives = "|".join(sub.upper() for sub in entry.model_fields)
            pattern = rf"{env}__[^_\s=]\S*?__(?:{alternatives})"
            valid.append(pattern)
            leaves.append(rf"{env}__[^_\s=]\S*?__PATH" if "path" in entry.model_fields else pattern)
        elif get_origin(field.annotation) is dict:
            valid.append(rf"{env}__[^_\s=]\S*")
            leaves.append(env)  # documented in its JSON form
        else:
            leaves.append(env)

    def compile_all(patterns: list[str]) -> list[re.Pattern[str]]:
        return [re.compile(p, re.IGNORECASE) for p in patterns]

    return compile_all(valid), compile_all(leaves)


VALID_SETTINGS, DOCUMENTED_SETTINGS = _setting_patterns()


def _invalid_settings(names: set[str]) -> list[str]:
    ours = {n for n in names if n.upper().startswith(PREFIX)}
    return sorted(n for n in ours if not any(p.fullmatch(n) for p in VALID_SETTINGS))


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defines(path: Path, attr: str) -> bool:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == attr:
                return True
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
                return True
    return False


def _entry_point_errors(argv: list[str]) -> list[str]:
    """Modules (``-m x.y``), Celery apps (``-A pkg``), factories (``x.y:attr``) not in the repo."""
    errors = []
    for flag, value in itertools.pairwise(argv):
        if flag in ("-m", "-A") and _module_file(value) is None:
            errors.append(f"{flag} {value}: no module {value} in the repo")
    for token in argv:
        match = re.fullmatch(r"(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_]\w*)", token)
        if match:
            path = _module_file(match["module"])
            if path is None or not _defines(path, match["attr"]):
                errors.append(f"{token}: not defined in the repo")
    return errors


def _starts_with(argv: list[str], prefix: list[str]) -> bool:
    return [str(a) for a in argv[: len(prefix)]] == prefix


def _interpolate(value: str) -> str:
    """Resolve compose interpolation as if only the required variables were set."""

    def one(match: re.Match[str]) -> str:
        op = match["op"] or ""
        if "?" in op:
            return REQUIRED_SAMPLES.get(match["name"], "set-by-operator")
        return match["arg"] if "-" in op else ""

    return INTERPOLATION.sub(one, value)


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A Settings built from exactly ``env`` (plus nothing GLMFT_ of this process)."""
    for name in list(os.environ):
        if name.upper().startswith(PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.upper().startswith(PREFIX):
            monkeypatch.setenv(name, value)
    return Settings()


# ---- docker compose -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = _load_all(COMPOSE)
    return doc


def _service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _compose_variables(compose: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(GLMFT_ names set in containers, variables interpolated from the operator's env file)."""
    in_containers = {n for s in compose["services"].values() for n in _service_env(s)}
    interpolated = {m["name"] for m in INTERPOLATION.finditer(COMPOSE.read_text())}
    return {n for n in in_containers if n.startswith(PREFIX)}, interpolated


def test_compose_names_the_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= SERVICES


def test_compose_glmft_variables_are_settings(compose: dict[str, Any]) -> None:
    in_containers, interpolated = _compose_variables(compose)
    assert in_containers, "the compose file sets no GLMFT_ variable"
    assert _invalid_settings(in_containers | interpolated) == []


def test_compose_settings_parse(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose["services"]
    for name in ("api", "worker", "beat", "migrate"):
        env = {k: _interpolate(v) for k, v in _service_env(services[name]).items()}
        settings = _settings_from(env, monkeypatch)
        assert settings.resolved_database_url.startswith("postgresql+psycopg://"), name
        assert settings.resolved_broker_url.startswith("redis://redis:"), name
        assert settings.artifact_root is not None, name
        assert "glm-4-9b-chat" in settings.models, name
    worker_env = {k: _interpolate(v) for k, v in _service_env(services["worker"]).items()}
    assert _settings_from(worker_env, monkeypatch).worker_gpus, "the worker declares no GPU"


def test_compose_secrets_are_required(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    assert "${POSTGRES_PASSWORD:?Variable not set}" in text
    assert not re.search(r"POSTGRES_PASSWORD:-", text), "the password must have no default"
    assert "x-glmft-env" in compose


def test_compose_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    commands = {n: [str(a) for a in s["command"]] for n, s in services.items() if "command" in s}
    assert _starts_with(commands["api"], API_COMMAND)
    assert _starts_with(commands["worker"], WORKER_COMMAND)
    assert "training" in commands["worker"]
    assert _starts_with(commands["beat"], BEAT_COMMAND)
    assert commands["migrate"] == MIGRATE_COMMAND
    for name in ("api", "worker", "beat", "migrate"):
        assert _entry_point_errors(commands[name]) == [], name
    assert services.get("beat", {}).get("deploy", {}).get("replicas", 1) == 1


def test_compose_dependencies_and_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for store in ("postgres", "redis"):
        assert services[store]["healthcheck"]["test"], store
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "beat"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
    assert any(str(p).endswith(":8000") for p in services["api"]["ports"])


def test_compose_worker_requests_gpus_and_shares_volumes(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "GLMFT_WORKER_GPUS" in _service_env(worker)
    volumes = [str(v) for v in worker["volumes"]]
    assert "artifacts:/data/artifacts" in volumes
    assert any(v.endswith(":/models:ro") for v in volumes)
    assert "artifacts:/data/artifacts" in [str(v) for v in compose["services"]["api"]["volumes"]]


def test_compose_mounts_only_named_volumes(compose: dict[str, Any]) -> None:
    named = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            # MODELS_DIR, when set, binds the host's weights over the `models` volume: the one
            # host path allowed. Everything else is a named volume.
            assert str(volume).startswith("${MODELS_DIR:-models}:") or "${" not in str(volume)
            source = _interpolate(str(volume)).split(":", 1)[0]
            assert source in named, f"{name}: {volume} is not a named volume"


def test_compose_builds_our_dockerfiles(compose: dict[str, Any]) -> None:
    built = {s["build"]["dockerfile"] for s in compose["services"].values() if "build" in s}
    assert built == {str(p.relative_to(REPO)) for p in DOCKERFILES}
    for service in compose["services"].values():
        if "build" in service:
            assert service["build"]["context"] == "."


# ---- deploy/.env.example ------------------------------------------------------------------------


def _example_names() -> set[str]:
    return {m["name"] for m in ENV_LINE.finditer(ENV_EXAMPLE.read_text())}


def test_env_example_lists_every_compose_variable(compose: dict[str, Any]) -> None:
    in_containers, interpolated = _compose_variables(compose)
    assert sorted((in_containers | interpolated) - _example_names()) == []


def test_env_example_documents_every_setting() -> None:
    names = _example_names()
    assert _invalid_settings(names) == []
    missing = [p.pattern for p in DOCUMENTED_SETTINGS if not any(p.fullmatch(n) for n in names)]
    assert missing == []


# ---- Dockerfiles --------------------------------------------------------------------------------


def _instructions(path: Path) -> Iterator[tuple[str, str]]:
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        pending = ""
        yield keyword.upper(), rest.strip()


def _pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["deepspeed"]
    return dict(r.split("==", 1) for r in requirements if r.startswith(("torch==", "deepspeed==")))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_and_runs_what_exists(dockerfile: Path) -> None:
    instructions = list(_instructions(dockerfile))
    copies = [rest for kw, rest in instructions if kw in ("COPY", "ADD")]
    assert copies, "nothing is copied in"
    for rest in copies:
        args = json.loads(rest) if rest.startswith("[") else rest.split()
        if any(a.startswith("--from=") for a in args):
            continue
        sources = [a for a in args if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repo"
    cmds = [json.loads(rest) for kw, rest in instructions if kw == "CMD"]
    assert cmds, "no CMD"
    for argv in cmds + [json.loads(r) for kw, r in instructions if kw == "ENTRYPOINT"]:
        assert _entry_point_errors(argv) == []
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert any(kw == "RUN" and re.search(r"pip install -e \S*\.", r) for kw, r in instructions)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_every_package_of_the_distribution(dockerfile: Path) -> None:
    # given: the packages pyproject.toml installs (an editable install imports them in place)
    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in found["packages"]["find"]["include"]}
    packages -= {"api"} if dockerfile.name == "worker.Dockerfile" else set()  # no web in workers
    # when
    copied = {
        rest.split()[0].rstrip("/")
        for kw, rest in _instructions(dockerfile)
        if kw == "COPY" and not rest.startswith("--from=")
    }
    # then
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


def test_dockerfiles_pin_the_ml_stack_of_pyproject() -> None:
    pins = _pins()
    api = (DEPLOY / "docker" / "api.Dockerfile").read_text()
    worker = (DEPLOY / "docker" / "worker.Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", api, re.MULTILINE)
    assert re.search(r"^FROM nvidia/cuda:\S*runtime\S*\s*$", worker, re.MULTILINE)
    assert f"torch=={pins['torch']} --index-url https://download.pytorch.org/whl/cpu" in api
    assert f"torch=={pins['torch']} --index-url" in worker
    assert "download.pytorch.org/whl/cu" in worker
    assert f"deepspeed=={pins['deepspeed']}" in worker
    assert '".[deepspeed,tensorboard]"' in worker
    worker_instructions = _instructions(DEPLOY / "docker" / "worker.Dockerfile")
    cmd = [json.loads(r) for kw, r in worker_instructions if kw == "CMD"][-1]
    assert _starts_with(cmd, WORKER_COMMAND)


# ---- Kubernetes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict[str, Any]]]:
    """Every document of every yaml file under deploy/k8s/base, by file name."""
    return {p.name: _load_all(p) for p in sorted(K8S.glob("*.yaml"))}


def _objects(k8s: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for name, docs in k8s.items()
        if name != "kustomization.yaml"
        for doc in docs
    }


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return pod.get("initContainers", []) + pod.get("containers", [])


def _argv(container: dict[str, Any]) -> list[str]:
    return [str(a) for a in container.get("command", []) + container.get("args", [])]


def test_kustomization_lists_the_manifests(k8s: dict[str, list[dict[str, Any]]]) -> None:
    (kustomization,) = k8s["kustomization.yaml"]
    resources = set(kustomization["resources"])
    assert all((K8S / r).is_file() for r in resources)
    expected = set(k8s) - {"kustomization.yaml", "secret.example.yaml"}
    assert resources == expected
    images = {i["name"] for i in kustomization["images"]}
    used = {c["image"] for obj in _objects(k8s).values() for c in _containers(obj)}
    assert {i for i in used if i.startswith("glmft/")} <= images


def test_k8s_glmft_variables_are_settings(
    k8s: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = _objects(k8s)
    config = objects["ConfigMap", "glmft-config"]["data"]
    secret = objects["Secret", "glmft-secrets"]["stringData"]
    names = set(config) | set(secret)
    for obj in objects.values():
        for container in _containers(obj):
            names |= {e["name"] for e in container.get("env", [])}
    assert _invalid_settings(names) == []
    assert not any(k.startswith(PREFIX) and "PASSWORD" in k for k in config)
    assert "GLMFT_DATABASE_URL" not in config, "the database URL carries the password: Secret"
    settings = _settings_from({**config, **secret}, monkeypatch)
    assert "glm-4-9b-chat" in settings.models
    assert settings.resolved_broker_url.startswith("redis://")


def test_k8s_references_resolve(k8s: dict[str, list[dict[str, Any]]]) -> None:
    objects = _objects(k8s)
    secret = objects["Secret", "glmft-secrets"]["stringData"]
    for obj in objects.values():
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in objects
        for container in _containers(obj):
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in objects
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "glmft-secrets" and ref["key"] in secret, env["name"]
    pvcs = {n: o["spec"]["accessModes"] for (k, n), o in objects.items() if k.endswith("Claim")}
    assert pvcs["glmft-artifacts"] == ["ReadWriteMany"]
    assert pvcs["glmft-models"] == ["ReadOnlyMany"]


def test_k8s_commands_and_probes(k8s: dict[str, list[dict[str, Any]]]) -> None:
    objects = _objects(k8s)
    (api,) = _containers(objects["Deployment", "glmft-api"])
    assert _starts_with(_argv(api), API_COMMAND)
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (beat,) = _containers(objects["Deployment", "glmft-beat"])
    assert _starts_with(_argv(beat), BEAT_COMMAND)
    assert objects["Deployment", "glmft-beat"]["spec"]["replicas"] == 1
    (migrate,) = _containers(objects["Job", "glmft-migrate"])
    assert _argv(migrate) == MIGRATE_COMMAND
    assert ("Service", "glmft-api") in objects
    for obj in objects.values():
        for container in _containers(obj):
            assert _entry_point_errors(_argv(container)) == [], container["name"]


def test_k8s_worker_requests_gpus(k8s: dict[str, list[dict[str, Any]]]) -> None:
    objects = _objects(k8s)
    deployment = objects["Deployment", "glmft-worker"]
    (worker,) = _containers(deployment)
    assert _starts_with(_argv(worker), WORKER_COMMAND)
    gpus = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus >= 1
    env = {e["name"]: e for e in worker["env"]}
    assert len(json.loads(env["GLMFT_WORKER_GPUS"]["value"])) == gpus
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 300
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    assert mounts["/models"].get("readOnly") is True and "/data/artifacts" in mounts
    services = [o for (kind, _), o in objects.items() if kind == "Service"]
    selectors = [s["spec"].get("selector", {}) for s in services]
    assert deployment["spec"]["selector"]["matchLabels"] not in selectors, "workers get no Service"
