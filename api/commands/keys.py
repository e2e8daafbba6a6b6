"""``glmft keys create|list|revoke``: API keys in the configured store (``GLMFT_DATABASE_URL``,
else SQLite under ``GLMFT_HOME``), for the operator on the server; admin keys do the same over
the API (``/keys``). A key is printed once, when it is made."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

NAME = "keys"
HELP = "API keys: 'glmft keys create --tenant T --scopes read,write', 'list', 'revoke ID'"
EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, help="state directory (default: GLMFT_HOME)")
    actions = parser.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="create, list or revoke"
    )
    create = actions.add_parser("create", help="make a key (printed once)")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    create.add_argument("--scopes", default="read,write", help="read, write, admin (comma list)")
    create.add_argument("--name", default="", help="what the key is for")
    create.add_argument("--json", action="store_true", help="print the key and its row as JSON")
    listing = actions.add_parser("list", help="every key: prefix, tenant, scopes, last use")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument("--active", action="store_true", help="leave out revoked keys")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = actions.add_parser("revoke", help="revoke a key by id or shown prefix")
    revoke.add_argument("key", help="key id (key-...) or prefix (sk-glmft-...)")


def open_store(home: Path | None) -> tuple[Any, Any]:
    """A session on the configured store (migrated first) and the settings."""
    from sqlmodel import Session

    from core.db import prepare
    from core.settings import Settings

    settings = Settings(home=home.resolve()) if home else Settings()
    return Session(prepare(settings), expire_on_commit=False), settings


def run(args: argparse.Namespace) -> int:
    from core.errors import AppError

    session, _settings = open_store(args.home)
    try:
        with session:
            return _ACTIONS[args.action](session, args)
    except AppError as exc:
        print(f"glmft keys {args.action}: {exc.message}")
        return EXIT_NOT_FOUND if exc.http_status == 404 else EXIT_USAGE


def _stamp(value: Any) -> str | None:
    return value.isoformat() if value else None


def _view(row: Any) -> dict[str, Any]:
    stamp = _stamp
    return {
        "id": row.id,
        "tenant": row.tenant_id,
        "name": row.name,
        "prefix": row.prefix,
        "scopes": row.scopes,
        "created_at": stamp(row.created_at),
        "last_used_at": stamp(row.last_used_at),
        "revoked_at": stamp(row.revoked_at),
    }


def _create(session: Any, args: argparse.Namespace) -> int:
    from core.keys import create_key

    scopes = args.scopes.split(",")
    row, key = create_key(session, tenant=args.tenant, scopes=scopes, name=args.name)
    if args.json:
        print(json.dumps({**_view(row), "key": key}))
    else:
        print(f"created {row.id} for tenant {row.tenant_id} ({', '.join(row.scopes)})")
        print(f"key (shown once, store it now): {key}")
    return EXIT_OK


def _list(session: Any, args: argparse.Namespace) -> int:
    from core.keys import list_keys

    rows = list_keys(session, tenant=args.tenant, include_revoked=not args.active)
    if args.json:
        print(json.dumps([_view(r) for r in rows]))
        return EXIT_OK
    print(f"{'id':<30} {'prefix':<18} {'tenant':<16} {'scopes':<17} {'last used':<20} state")
    for row in rows:
        view = _view(row)
        used = (view["last_used_at"] or "never")[:19]
        state = "revoked" if row.revoked_at else "active"
        print(
            f"{row.id:<30} {row.prefix:<18} {row.tenant_id:<16} {','.join(row.scopes):<17} "
            f"{used:<20} {state}"
        )
    return EXIT_OK


def _revoke(session: Any, args: argparse.Namespace) -> int:
    from core.keys import find_key, revoke_key

    row = revoke_key(session, find_key(session, args.key))
    print(f"revoked {row.id} ({row.prefix}..., tenant {row.tenant_id})")
    return EXIT_OK


_ACTIONS = {"create": _create, "list": _list, "revoke": _revoke}
