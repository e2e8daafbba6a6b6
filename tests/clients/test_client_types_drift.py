"""The SDK's pydantic models against the server's OpenAPI document, route by route, so the two
cannot drift: a response model has exactly the server's fields (nested models too) and accepts
every type the server may send; a request model sends only fields the server takes, every field
it requires, and only types it accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from glmft_client import types as t
from pydantic import BaseModel

from api.main import create_app
from core.settings import Settings

Direction = Literal["response", "request"]
Schema = dict[str, Any]

RESPONSES: list[tuple[type[BaseModel], str, str, str]] = [
    (t.DatasetWithReport, "post", "/datasets", "201"),
    (t.Page[t.Dataset], "get", "/datasets", "200"),
    (t.Dataset, "get", "/datasets/{dataset_id}", "200"),
    (t.ValidationReport, "get", "/datasets/{dataset_id}/report", "200"),
    (t.Job, "post", "/jobs", "201"),
    (t.Page[t.Job], "get", "/jobs", "200"),
    (t.Job, "get", "/jobs/{job_id}", "200"),
    (t.JobCheck, "post", "/jobs/check", "200"),
    (t.Job, "post", "/jobs/{job_id}/cancel", "200"),
    (t.Job, "post", "/jobs/{job_id}/pause", "200"),
    (t.Job, "post", "/jobs/{job_id}/resume", "200"),
    (t.Page[t.JobEvent], "get", "/jobs/{job_id}/events", "200"),
    (t.Page[t.Metric], "get", "/jobs/{job_id}/metrics", "200"),
    (t.ListOf[t.Checkpoint], "get", "/jobs/{job_id}/checkpoints", "200"),
    (t.ListOf[t.Model], "get", "/models", "200"),
    (t.ListOf[t.Adapter], "get", "/adapters", "200"),
    (t.Adapter, "get", "/adapters/{adapter_id}", "200"),
    (t.Adapter, "post", "/adapters/{adapter_id}/load", "200"),
    (t.Adapter, "post", "/adapters/{adapter_id}/unload", "200"),
    (t.Adapter, "post", "/jobs/{job_id}/checkpoints/{step}/promote", "201"),
    (t.ChatResponse, "post", "/chat", "200"),
    (t.Evaluation, "post", "/evaluations", "201"),
    (t.Page[t.Evaluation], "get", "/evaluations", "200"),
    (t.Evaluation, "get", "/evaluations/{evaluation_id}", "200"),
    (t.Page[t.EvaluationSample], "get", "/evaluations/{evaluation_id}/samples", "200"),
    (t.Page[t.EvaluationEvent], "get", "/evaluations/{evaluation_id}/events", "200"),
    (t.Evaluation, "post", "/evaluations/{evaluation_id}/cancel", "200"),
]
REQUESTS: list[tuple[type[BaseModel], str, str]] = [
    (t.JobCreateRequest, "post", "/jobs"),
    (t.JobCheckRequest, "post", "/jobs/check"),
    (t.ResumeRequest, "post", "/jobs/{job_id}/resume"),
    (t.AdapterLoadRequest, "post", "/adapters/{adapter_id}/load"),
    (t.ChatRequest, "post", "/chat"),
    (t.EvaluationCreateRequest, "post", "/evaluations"),
]


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> Schema:
    home: Path = tmp_path_factory.mktemp("openapi")
    return create_app(Settings(home=home)).openapi()


def _defs(doc: Schema) -> Schema:
    return doc.get("$defs") or doc.get("components", {}).get("schemas", {})


def _deref(schema: Schema, doc: Schema) -> Schema:
    while "$ref" in schema:
        schema = _defs(doc)[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _branches(schema: Schema, doc: Schema) -> list[Schema]:
    schema = _deref(schema, doc)
    union = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    return [b for part in union for b in _branches(part, doc)] if union else [schema]


def _kinds(schema: Schema, doc: Schema) -> set[str]:
    kinds: set[str] = set()
    for branch in _branches(schema, doc):
        declared = branch.get("type")
        if isinstance(declared, list):
            kinds |= set(declared)
        elif declared:
            kinds.add(declared)
        elif "properties" in branch:
            kinds.add("object")
        else:
            kinds.add("any")
    return kinds


def _covers(accepting: set[str], sent: set[str]) -> bool:
    """Whether a side taking ``accepting`` takes everything of ``sent`` (int is a number)."""
    return "any" in accepting or all(
        k in accepting or (k == "integer" and "number" in accepting) for k in sent
    )


def _part(schema: Schema, doc: Schema, key: str) -> Schema | None:
    """The object (``properties``) or array (``items``) branch of a possibly nullable schema."""
    return next((b for b in _branches(schema, doc) if key in b), None)


def compare(
    sdk: Schema, sdk_doc: Schema, server: Schema, server_doc: Schema, where: str, way: Direction
) -> list[str]:
    """Every mismatch between an SDK schema and the server's, with its dotted location."""
    problems: list[str] = []
    sdk_obj, server_obj = _part(sdk, sdk_doc, "properties"), _part(server, server_doc, "properties")
    if sdk_obj is not None and server_obj is not None:
        mine, theirs = sdk_obj["properties"], server_obj["properties"]
        if way == "response":
            problems += [
                f"{where}.{f}: the server sends it, the SDK lacks it"
                for f in theirs.keys() - mine.keys()
            ]
        else:
            missing = set(server_obj.get("required", [])) - mine.keys()
            problems += [f"{where}.{f}: required by the server, never sent" for f in missing]
        problems += [
            f"{where}.{f}: not a field of the server's schema" for f in mine.keys() - theirs.keys()
        ]
        for name in mine.keys() & theirs.keys():
            sdk_kinds, server_kinds = _kinds(mine[name], sdk_doc), _kinds(theirs[name], server_doc)
            if way == "response" and not _covers(sdk_kinds, server_kinds):
                problems.append(
                    f"{where}.{name}: server sends {server_kinds}, SDK takes {sdk_kinds}"
                )
            # requests are sent with exclude_none: a None is never on the wire
            if way == "request" and not _covers(server_kinds, sdk_kinds - {"null"}):
                problems.append(
                    f"{where}.{name}: SDK sends {sdk_kinds}, server takes {server_kinds}"
                )
            problems += compare(
                mine[name], sdk_doc, theirs[name], server_doc, f"{where}.{name}", way
            )
    sdk_list, server_list = _part(sdk, sdk_doc, "items"), _part(server, server_doc, "items")
    if sdk_list is not None and server_list is not None:
        problems += compare(
            sdk_list["items"], sdk_doc, server_list["items"], server_doc, f"{where}[]", way
        )
    return problems


def _operation(openapi: Schema, method: str, path: str) -> Schema:
    assert path in openapi["paths"], f"the server has no route {path}"
    operation: Schema = openapi["paths"][path][method]
    return operation


@pytest.mark.parametrize(("model", "method", "path", "status"), RESPONSES)
def test_sdk_response_models_match_the_server(
    openapi: Schema, model: type[BaseModel], method: str, path: str, status: str
) -> None:
    server = _operation(openapi, method, path)["responses"][status]["content"]["application/json"][
        "schema"
    ]
    sdk = model.model_json_schema(mode="validation")
    assert compare(sdk, sdk, server, openapi, model.__name__, "response") == []


@pytest.mark.parametrize(("model", "method", "path"), REQUESTS)
def test_sdk_request_models_match_the_server(
    openapi: Schema, model: type[BaseModel], method: str, path: str
) -> None:
    server = _operation(openapi, method, path)["requestBody"]["content"]["application/json"][
        "schema"
    ]
    sdk = model.model_json_schema(mode="serialization")
    assert compare(sdk, sdk, server, openapi, model.__name__, "request") == []


def test_the_comparison_catches_drift(openapi: Schema) -> None:
    # a field the server added, a field it dropped and a changed type are all reported
    class Drifted(BaseModel):
        id: str
        step: str
        gone: int

    server = openapi["paths"]["/models"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]
    model_schema = _part(server, openapi, "properties")["properties"]["data"]["items"]  # type: ignore[index]
    sdk = Drifted.model_json_schema()
    problems = compare(sdk, sdk, model_schema, openapi, "Model", "response")
    assert "Model.kind: the server sends it, the SDK lacks it" in problems
    assert "Model.gone: not a field of the server's schema" in problems
    assert any(p.startswith("Model.step: server sends") for p in problems)
