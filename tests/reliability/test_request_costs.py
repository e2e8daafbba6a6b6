"""What one request may cost: an oversize chat prompt is refused (413 for a body over the chat
limit, 422 for text no prompt could hold) without tokenizing it, its JSON decoded off the event
loop, and the API goes on answering meanwhile."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.reliability.services import MODEL, RedisServer, service_env, start_api, stop

HEALTH_BUDGET_S = 0.1
JSON = {"content-type": "application/json"}


class HealthProbe:
    """Asks ``/healthz`` over and over from a thread, keeping how long each answer took."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                response = client.get("/healthz")
                self.latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    self.failures.append(response.text)
                time.sleep(0.01)


def test_an_oversize_prompt_is_refused_while_the_api_answers(
    database_url: str, redis_server: RedisServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = service_env(tmp_path / "home", database_url, redis_server.url(), tiny_model_dir)
    api = start_api(env, tmp_path / "api.log")
    try:
        with api.client(timeout=120) as client:
            hello = {"model": MODEL, "max_new_tokens": 4, "messages": [_user("你好")]}
            assert client.post("/chat", json=hello).status_code == 200  # the model is loaded
            # encoded up front: the probe's thread shares this process (and its GIL)
            over = _json({**hello, "messages": [_user("a " * (20 << 20))]})  # 40 MiB: over 32
            huge = _json({**hello, "messages": [_user("a " * (8 << 20))]})  # 16 MiB
            with HealthProbe(api.base_url) as probe:
                time.sleep(0.2)
                answers = [
                    client.post(path, content=body, headers=JSON)
                    for path in ("/chat", "/v1/chat/completions")
                    for body in (over, huge)
                ]
                time.sleep(0.2)
    finally:
        stop(api.process)
    assert [a.status_code for a in answers] == [413, 422, 413, 422]
    assert answers[0].json()["error"]["code"] == "payload_too_large"
    assert answers[1].json()["error"]["code"] == "prompt_too_long"
    assert answers[2].json()["error"]["type"] == "invalid_request_error"  # OpenAI's shape
    assert answers[3].json()["error"]["code"] == "prompt_too_long"
    assert len(probe.latencies) >= 10 and not probe.failures
    assert max(probe.latencies) < HEALTH_BUDGET_S, sorted(probe.latencies)[-5:]


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()
