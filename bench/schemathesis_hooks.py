"""Schemathesis hooks of ``bench/schemathesis_bench.py`` (``SCHEMATHESIS_HOOKS``).

Generated ids almost never name a real dataset, job or adapter, so the routes behind them would
only ever answer 404. Half of the generated path parameters are swapped for the real ids the
bench created first (``SCHEMATHESIS_BENCH_IDS``, JSON), and so are some dataset ids and model
names in request bodies, so that job, checkpoint, adapter and chat routes run for real. DELETE
keeps its generated ids: the bench's resources must live through the whole run.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import schemathesis

IDS: dict[str, Any] = json.loads(os.environ.get("SCHEMATHESIS_BENCH_IDS", "{}"))
_PATH_IDS = {
    "job_id": "job",
    "dataset_id": "dataset",
    "file_id": "dataset",
    "adapter_id": "adapter",
    "step": "step",
}
_rng = random.Random(0)


@schemathesis.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
    operation = getattr(context, "operation", None)
    if not isinstance(path_parameters, dict) or (
        operation is not None and operation.method.upper() == "DELETE"
    ):
        return path_parameters
    for name, kind in _PATH_IDS.items():
        if name in path_parameters and kind in IDS and _rng.random() < 0.5:
            path_parameters[name] = IDS[kind]
    return path_parameters


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:  # noqa: ARG001 - the hook's signature
    if not isinstance(body, dict) or _rng.random() < 0.5:
        return body
    for key in ("training_dataset", "training_file"):
        if key in body and "dataset" in IDS:
            body[key] = IDS["dataset"]
    if "model" in body and isinstance(body["model"], str):
        body["model"] = _rng.choice([IDS.get("base", body["model"]), IDS.get("adapter", "")])
    return body
