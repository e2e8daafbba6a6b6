"""Dashboard fixtures: Debian's Chromium driven by Playwright against the live service
(``tests.live_service``), and the jobs the pages show.

Chromium is the system one (``apt-get install chromium``, done by scripts/test.sh), never a
browser Playwright downloads; it runs headless with every background connection off, and each
test gets a fresh context (empty storage, a 1366x768 laptop screen). Screenshots go to
``GLMFT_UI_SCREENSHOTS`` when set (``docs/img`` refreshes the README's), else to a temporary
folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.live_service import MODEL, TINY_OVERRIDES, LiveService, demo_jsonl

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1366, "height": 768}
#: The finished job: 4 steps, evaluated (with generation) and saved at steps 2 and 4.
EVAL_OVERRIDES: dict[str, Any] = {
    **TINY_OVERRIDES,
    "training_args.eval_strategy": "steps",
    "training_args.eval_steps": 2,
    "training_args.generation_config.max_new_tokens": 8,
}
DEV = REPO / "trainer" / "assets" / "demo" / "dev.jsonl"


@dataclass(frozen=True)
class FinishedJob:
    id: str
    adapter_id: str
    training_dataset: str
    validation_dataset: str


def api(service: LiveService, key: str | None = None) -> httpx.Client:
    """An HTTP client of the live service with ``key`` (default: the test tenant's)."""
    token = key or service.api_key
    return httpx.Client(
        base_url=service.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium, one per test module (Playwright's loop ends with the module)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail("chromium is not installed: apt-get install -y chromium (scripts/test.sh does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser, live_service: LiveService) -> Iterator[BrowserContext]:
    """A fresh profile; every request that leaves the service fails the test."""
    context = browser.new_context(viewport=VIEWPORT, base_url=live_service.base_url)
    outside: list[str] = []
    context.on(
        "request",
        lambda request: (
            None if request.url.startswith(live_service.base_url) else outside.append(request.url)
        ),
    )
    yield context
    context.close()
    assert not outside, f"the dashboard loaded from outside the machine: {outside}"


@pytest.fixture
def page(context: BrowserContext, live_service: LiveService) -> Iterator[Page]:
    """A page of a profile that holds the test tenant's API key; script errors fail the test."""
    context.add_init_script(f"localStorage.setItem('glmft.apiKey', {live_service.api_key!r})")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(30_000)
    yield page
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("GLMFT_UI_SCREENSHOTS")
    folder = Path(given) if given else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def finished_job(live_service: LiveService) -> FinishedJob:
    """A LoRA job trained to the end with a validation set (token statistics on its data)."""
    with api(live_service) as client:
        train = client.post(
            "/datasets",
            files={"file": ("train.jsonl", demo_jsonl(16))},
            data={"model": MODEL},
        ).json()
        dev_lines = DEV.read_bytes().splitlines(keepends=True)[:4]
        dev = client.post("/datasets", files={"file": ("dev.jsonl", b"".join(dev_lines))}).json()
        created = client.post(
            "/jobs",
            json={
                "model": MODEL,
                "method": "lora",
                "training_dataset": train["id"],
                "validation_dataset": dev["id"],
                "config": "tiny/lora",
                "overrides": EVAL_OVERRIDES,
                "gpus": 0,
                "suffix": "ui",
            },
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        job = wait_for_state(client, job_id, {"succeeded", "failed", "cancelled"}, 300)
    assert job["state"] == "succeeded", job["error"]
    return FinishedJob(job_id, job["adapter_id"], train["id"], dev["id"])


def wait_for_state(
    client: httpx.Client, job_id: str, states: set[str], timeout: float
) -> dict[str, Any]:
    from tests.helpers import wait_for

    def reached() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        return job if job["state"] in states else None

    result: dict[str, Any] = wait_for(reached, timeout, f"{job_id} to reach {states}")
    return result
