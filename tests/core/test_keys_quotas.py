"""API keys and quotas in the store, on SQLite and PostgreSQL: a key is stored only hashed,
found by its hash, revoked at once, its last use written at most once a minute; scopes nest;
quotas count usage in SQL and refuse with the figures."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, update
from sqlmodel import Session, select

from core.errors import Invalid, KeyNotFound, QuotaExceeded
from core.keys import (
    KEY_PREFIX,
    Principal,
    authenticate,
    create_key,
    find_key,
    hash_key,
    list_keys,
    revoke_key,
)
from core.models import Checkpoint, Dataset, Job, utcnow
from core.quotas import check_job_admission, check_storage
from core.settings import EnvApiKey, QuotaSettings, Settings
from core.team_models import ApiKey
from core.tenants import check_quota_overrides, effective_quotas, ensure_tenant, usage


def test_a_key_is_stored_hashed_found_and_revoked(engine: Engine) -> None:
    settings = Settings()
    with Session(engine, expire_on_commit=False) as session:
        row, key = create_key(session, tenant="team-a", scopes=["write", "read"], name="ci")
        assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 43
        assert row.prefix == key[: len(row.prefix)] and row.scopes == ["read", "write"]
        stored = session.exec(select(ApiKey)).all()
        assert [r.key_hash for r in stored] == [hash_key(key)]
        assert all(key not in str(r.model_dump()) for r in stored)  # the key is nowhere
        principal = authenticate(session, settings, key)
        assert principal == Principal("team-a", frozenset({"read", "write"}), row.id)
        assert authenticate(session, settings, key[:-1] + "x") is None
        assert find_key(session, row.prefix).id == row.id
        revoke_key(session, row)
        assert authenticate(session, settings, key) is None
        assert list_keys(session, include_revoked=False) == []
        with pytest.raises(KeyNotFound):
            find_key(session, "sk-glmft-nothing")
        with pytest.raises(Invalid, match="scopes must be"):
            create_key(session, tenant="team-a", scopes=["root"])
        with pytest.raises(Invalid, match="tenant id"):
            create_key(session, tenant="../etc", scopes=["read"])


def test_last_use_is_written_at_most_once_per_interval(engine: Engine) -> None:
    settings = Settings(key_touch_interval_s=60)
    with Session(engine, expire_on_commit=False) as session:
        row, key = create_key(session, tenant="t", scopes=["read"])
        authenticate(session, settings, key)
        first = session.get(ApiKey, row.id, populate_existing=True)
        assert first is not None and first.last_used_at is not None
        stamp = first.last_used_at
        authenticate(session, settings, key)  # within the minute: no write
        again = session.get(ApiKey, row.id, populate_existing=True)
        assert again is not None and again.last_used_at == stamp
        old = utcnow() - timedelta(seconds=120)
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=old))  # type: ignore[arg-type]
        session.commit()
        authenticate(session, settings, key)
        later = session.get(ApiKey, row.id, populate_existing=True)
        assert later is not None and later.last_used_at is not None
        assert later.last_used_at.replace(tzinfo=None) > old.replace(tzinfo=None)


def test_environment_keys_keep_working_with_their_scopes(engine: Engine) -> None:
    settings = Settings(
        api_keys={"plain": "team-a", "ops": EnvApiKey(tenant="ops", scopes=["admin"])}
    )
    with Session(engine) as session:
        plain = authenticate(session, settings, "plain")
        ops = authenticate(session, settings, "ops")
    assert plain is not None and plain.tenant == "team-a"
    assert plain.allows("write") and plain.allows("read") and not plain.allows("admin")
    assert ops is not None and ops.allows("admin") and ops.allows("read")
    assert not Principal("t", frozenset({"read"})).allows("write")


def _job(session: Session, tenant: str, state: str, gpus: int = 0) -> None:
    dataset = Dataset(tenant_id=tenant, filename="t.jsonl", path="/x", bytes=100, sha256="0")
    session.add(dataset)
    session.commit()
    session.add(
        Job(
            tenant_id=tenant,
            state=state,
            model="m",
            method="lora",
            training_dataset_id=dataset.id,
            gpus=gpus,
        )
    )
    session.commit()


def test_quotas_count_usage_and_refuse_with_the_figures(engine: Engine) -> None:
    settings = Settings(quotas=QuotaSettings(max_queued_jobs=2, max_storage_bytes=1000))
    with Session(engine, expire_on_commit=False) as session:
        _job(session, "t", "queued")
        _job(session, "t", "running", gpus=2)
        # 1 queued of 2: fits
        check_job_admission(session, "t", 0, effective_quotas(session, settings, "t"))
        _job(session, "t", "queued")
        with pytest.raises(QuotaExceeded) as refused:
            check_job_admission(session, "t", 0, effective_quotas(session, settings, "t"))
        assert refused.value.http_status == 429
        assert refused.value.details == {
            "quota": "max_queued_jobs",
            "used": 2,
            "allowed": 2,
            "requested": 1,
        }
        job_id = session.exec(select(Job.id)).first()
        assert job_id is not None
        session.add(Checkpoint(job_id=job_id, tenant_id="t", step=1, path="/c", bytes=500))
        session.commit()
        assert usage(session, "t") == {
            "max_running_jobs": 1,
            "max_queued_jobs": 2,
            "max_gpus": 2,
            "max_storage_bytes": 3 * 100 + 500,
        }
        with pytest.raises(QuotaExceeded, match="bytes of storage") as storage:
            check_storage(session, settings, "t", 201)
        assert storage.value.details["used"] == 800 and storage.value.details["allowed"] == 1000
        check_storage(session, settings, "t", 200)
        # a tenant's overrides beat the defaults; None lifts a limit
        row = ensure_tenant(session, "t")
        row.quotas = check_quota_overrides({"max_queued_jobs": None, "max_gpus": 1})
        session.add(row)
        session.commit()
        limits = effective_quotas(session, settings, "t")
        assert limits["max_queued_jobs"] is None and limits["max_gpus"] == 1
        check_job_admission(session, "t", 1, limits)
        with pytest.raises(QuotaExceeded, match="GPUs"):
            check_job_admission(session, "t", 2, limits)
        with pytest.raises(Invalid, match="unknown quota"):
            check_quota_overrides({"max_cats": 3})
        with pytest.raises(Invalid, match=">= 0"):
            check_quota_overrides({"max_gpus": -1})
