"""Vision fine-tuning through the real service (uvicorn + a Celery worker + PostgreSQL + Redis):
an archive of images uploaded, a LoRA job on ``glm-4v-tiny`` trained by the worker, and the
adapter answering questions about images through the official ``openai`` package and
``POST /chat``, each colour with the answer it was trained on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import wait_for
from tests.live_service import LiveService, run_live_service
from tests.vision_data import COLOURS, QUESTION, colour_files, data_url, png, zip_bytes

MODEL = "glm-4v-tiny"


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_vision_model_dir: Path
) -> Iterator[LiveService]:
    with run_live_service(
        tmp_path_factory.mktemp("vision_service"),
        tiny_model_dir,
        more_models={MODEL: tiny_vision_model_dir},
        redis_db=12,
    ) as live:
        yield live


def _http(service: LiveService) -> httpx.Client:
    return httpx.Client(
        base_url=service.base_url,
        headers={"Authorization": f"Bearer {service.api_key}"},
        timeout=120,
    )


def _finished(http: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job = http.get(f"/jobs/{job_id}").json()
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


def _image_question(colour: str) -> list[dict[str, Any]]:
    url = data_url(png(COLOURS[colour][0]))
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": QUESTION},
            ],
        }
    ]


def test_vision_lora_job_trains_and_the_adapter_answers_about_images(
    service: LiveService,
) -> None:
    with _http(service) as http:
        files = {"file": ("colours.zip", zip_bytes(colour_files()), "application/zip")}
        dataset = http.post("/datasets", files=files).json()
        assert dataset["valid"] is True, dataset
        job = http.post(
            "/jobs",
            json={
                "model": MODEL,
                "method": "lora",
                "training_dataset": dataset["id"],
                "config": "tiny/lora",
                "gpus": 0,
                "overrides": {
                    "training_args.max_steps": 60,
                    "training_args.save_steps": 60,
                    "training_args.eval_steps": 60,
                    "training_args.logging_steps": 10,
                    "training_args.learning_rate": 1e-2,
                    "training_args.generation_config.max_new_tokens": 8,
                },
            },
        ).json()
        assert "id" in job, job
        job = wait_for(lambda: _finished(http, job["id"]), 300, "the vision job")
        assert job["state"] == "succeeded", job
        metrics = http.get(f"/jobs/{job['id']}/metrics", params={"limit": 500}).json()["data"]
        losses = [m["value"] for m in metrics if m["name"] == "loss" and m["split"] == "train"]
        assert losses[-1] < losses[0] / 10, losses
        evals = {m["name"] for m in metrics if m["split"] == "validation"}
        assert {"rouge-1", "rouge-2", "rouge-l", "bleu-4"} <= evals, evals
        adapter = job["adapter_id"]

        client = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=service.api_key)
        for colour, (_, answer) in COLOURS.items():
            reply = client.chat.completions.create(
                model=adapter, messages=_image_question(colour), temperature=0, max_tokens=8
            )  # type: ignore[arg-type]
            assert reply.choices[0].message.content == answer, (colour, reply)
        stream = client.chat.completions.create(
            model=adapter, messages=_image_question("blue"), temperature=0, stream=True
        )  # type: ignore[arg-type]
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert streamed == COLOURS["blue"][1]
        base = client.chat.completions.create(
            model=MODEL, messages=_image_question("red"), temperature=0, max_tokens=8
        )  # type: ignore[arg-type]
        assert base.choices[0].message.content != COLOURS["red"][1]  # no adapter left active
        # the same through the native route, the image as GLM-4's `image` on the message
        red = {"role": "user", "content": QUESTION, "image": data_url(png(COLOURS["red"][0]))}
        native = http.post(
            "/chat", json={"model": adapter, "messages": [red], "temperature": 0}
        ).json()
        assert native["message"]["content"] == COLOURS["red"][1], native
        # an image by URL is never fetched; a text model takes no image
        remote = [{"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}}]
        with pytest.raises(openai.UnprocessableEntityError, match="data: URLs"):
            client.chat.completions.create(
                model=adapter, messages=[{"role": "user", "content": remote}]
            )  # type: ignore[arg-type]
        with pytest.raises(openai.UnprocessableEntityError, match="not a vision model"):
            client.chat.completions.create(model="glm-4-tiny", messages=_image_question("blue"))  # type: ignore[arg-type]
