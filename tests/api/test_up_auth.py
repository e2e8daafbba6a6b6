"""``glmft up`` and who may call: the no-key local mode on loopback only, keys required on any
other address, and a refusal to start there while no key exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlmodel import Session

from api.commands.up import choose_auth, is_loopback
from core.db import make_engine, upgrade
from core.keys import create_key, revoke_key

REPO = Path(__file__).resolve().parents[2]
PUBLIC = "0.0.0.0"  # noqa: S104 - the binding being refused


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
    assert not any(is_loopback(h) for h in (PUBLIC, "::", "10.0.0.2", "example.com"))


def test_keys_are_required_off_loopback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'glmft.db'}"
    upgrade(url)
    local: dict[str, str] = {}
    assert choose_auth("127.0.0.1", local, url) is None
    assert local["GLMFT_ALLOW_ANONYMOUS"] == "true"
    off: dict[str, str] = {"GLMFT_ALLOW_ANONYMOUS": "false"}
    assert choose_auth("127.0.0.1", off, url) is None and off["GLMFT_ALLOW_ANONYMOUS"] == "false"
    wide: dict[str, str] = {}
    refusal = choose_auth(PUBLIC, wide, url)
    assert refusal is not None and "glmft keys create" in refusal
    forced = {"GLMFT_ALLOW_ANONYMOUS": "true"}
    refusal = choose_auth(PUBLIC, forced, url)
    assert refusal is not None and "only for loopback" in refusal
    engine = make_engine(url)
    with Session(engine) as session:
        row, _ = create_key(session, tenant="ops", scopes=["admin"])
        assert choose_auth(PUBLIC, wide, url) is None
        assert wide["GLMFT_ALLOW_ANONYMOUS"] == "false"
        revoke_key(session, row)  # a revoked key does not count
    engine.dispose()
    assert choose_auth(PUBLIC, {}, url) is not None


def test_glmft_up_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMFT_")}
    env["GLMFT_API_KEYS"] = json.dumps({})
    done = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "up", "--host", PUBLIC, "--home", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "needs an API key" in done.stderr and "glmft keys create" in done.stderr
    assert not (tmp_path / "models").exists()  # refused before building or starting anything
