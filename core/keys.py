"""API keys: made, found, listed and revoked here, for the API and for ``glmft keys``.

A key is ``sk-glmft-`` followed by 43 URL-safe characters (32 random bytes). Only its SHA-256
is stored (a key has 256 bits of entropy, so a fast hash is enough: nothing to brute-force),
with its first characters as ``prefix`` to recognise it in a list; the key itself is shown
once, when it is made. Scopes are ``read`` (GETs), ``write`` (everything a tenant changes:
uploads, jobs, cancels, chat) and ``admin`` (keys, tenants, every tenant's metrics); each
includes the ones before it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from core.errors import Invalid, KeyNotFound
from core.models import utcnow
from core.settings import EnvApiKey, Settings
from core.team_models import ApiKey
from core.tenants import ensure_tenant

KEY_PREFIX = "sk-glmft-"
SHOWN_CHARS = len(KEY_PREFIX) + 8  # the prefix kept in clear: sk-glmft-AbCd1234
SCOPES = ("read", "write", "admin")  # each includes the ones before it
TENANT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, what it may do, and through which key (``None``: the local
    mode's anonymous caller or a key of ``GLMFT_API_KEYS``)."""

    tenant: str
    scopes: frozenset[str]
    key_id: str | None = None

    def allows(self, scope: str) -> bool:
        """Whether ``scope`` is granted (``admin`` grants ``write``, ``write`` grants ``read``)."""
        level = SCOPES.index(scope)
        return any(s in self.scopes and SCOPES.index(s) >= level for s in SCOPES)


def hash_key(key: str) -> str:
    """The stored form of a key: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def normalize_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes in canonical order; raises ``Invalid`` for an unknown one or none."""
    given = {s.strip() for s in scopes if s.strip()}
    unknown = sorted(given - set(SCOPES))
    if unknown or not given:
        raise Invalid(
            f"scopes must be some of {', '.join(SCOPES)} (got {sorted(given) or 'none'})",
            param="scopes",
        )
    return [s for s in SCOPES if s in given]


def check_tenant_id(tenant: str, param: str = "tenant") -> str:
    """``tenant`` if it is a safe id (it names directories); raises ``Invalid``."""
    if not TENANT_ID.match(tenant):
        raise Invalid(
            f"tenant id {tenant!r} must be 1-100 letters, digits, '.', '_' or '-'", param=param
        )
    return tenant


def create_key(
    session: Session, *, tenant: str, scopes: Sequence[str], name: str = ""
) -> tuple[ApiKey, str]:
    """Make a key for ``tenant`` (its row is created if needed); returns the row and the key,
    which is not stored anywhere and cannot be shown again."""
    check_tenant_id(tenant)
    ensure_tenant(session, tenant)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        tenant_id=tenant,
        name=name,
        prefix=key[:SHOWN_CHARS],
        key_hash=hash_key(key),
        scopes=normalize_scopes(scopes),
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return row, key


def list_keys(
    session: Session, *, tenant: str | None = None, include_revoked: bool = True
) -> list[ApiKey]:
    """Keys, newest first; of one tenant when ``tenant`` is given."""
    statement = select(ApiKey).order_by(col(ApiKey.created_at).desc(), col(ApiKey.id))
    if tenant is not None:
        statement = statement.where(ApiKey.tenant_id == tenant)
    if not include_revoked:
        statement = statement.where(col(ApiKey.revoked_at).is_(None))
    return list(session.exec(statement).all())


def find_key(session: Session, ref: str) -> ApiKey:
    """A key by id, or by its shown prefix when exactly one key has it."""
    row = session.get(ApiKey, ref)
    if row is not None:
        return row
    matches = session.exec(select(ApiKey).where(ApiKey.prefix == ref)).all()
    if len(matches) == 1:
        return matches[0]
    raise KeyNotFound(f"API key {ref} not found", param="key_id")


def revoke_key(session: Session, key: ApiKey) -> ApiKey:
    """Revoke ``key`` at once (again: no change); it answers 401 from the next request on."""
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
        session.commit()
        session.refresh(key)
    return key


def authenticate(session: Session, settings: Settings, presented: str) -> Principal | None:
    """The principal of a presented key (``GLMFT_API_KEYS`` first, then SQL); ``None`` for
    an unknown or revoked key."""
    for key, entry in settings.api_keys.items():  # compare_digest: no hint of a partial match
        if hmac.compare_digest(key.encode(), presented.encode()):
            spec = EnvApiKey(tenant=entry) if isinstance(entry, str) else entry
            check_tenant_id(spec.tenant, "GLMFT_API_KEYS")
            return Principal(spec.tenant, frozenset(normalize_scopes(spec.scopes)))
    if not presented.startswith(KEY_PREFIX):
        return None
    digest = hash_key(presented)
    row = session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        return None
    _touch(session, row, settings.key_touch_interval_s)
    return Principal(row.tenant_id, frozenset(row.scopes), row.id)


def _touch(session: Session, row: ApiKey, interval_s: float) -> None:
    """Record the use, at most once per ``interval_s``: a conditional UPDATE, so concurrent
    requests write it once and most requests write nothing."""
    now = utcnow()
    cutoff = now - timedelta(seconds=interval_s)
    last = row.last_used_at
    if last is not None and (last if last.tzinfo else last.replace(tzinfo=UTC)) > cutoff:
        return
    session.execute(
        update(ApiKey)
        .where(col(ApiKey.id) == row.id)
        .where(or_(col(ApiKey.last_used_at).is_(None), col(ApiKey.last_used_at) < cutoff))
        .values(last_used_at=now)
    )
    session.commit()
