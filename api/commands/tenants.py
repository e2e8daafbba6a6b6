"""``glmft tenants list|show|set``: tenants' quotas (what each uses and may), fair-share
weights and quota overrides, in the configured store; admin keys do the same over the API
(``/tenants``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from api.commands.keys import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, open_store

NAME = "tenants"
HELP = "tenants: 'glmft tenants list', 'show T', 'set T --weight 2 --quota max_gpus=4'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, help="state directory (default: GLMFT_HOME)")
    actions = parser.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="list, show or set"
    )
    actions.add_parser("list", help="every tenant with its quotas").add_argument(
        "--json", action="store_true", help="print JSON"
    )
    show = actions.add_parser("show", help="one tenant: quotas used and allowed")
    show.add_argument("tenant", help="the tenant id")
    show.add_argument("--json", action="store_true", help="print JSON")
    change = actions.add_parser("set", help="change a tenant's weight, name or quotas")
    change.add_argument("tenant", help="the tenant id (made if it has no row)")
    change.add_argument("--weight", type=float, help="share of job starts (default 1)")
    change.add_argument("--name", help="a display name")
    change.add_argument(
        "--quota",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a quota (VALUE a number or 'none' for no limit); repeat",
    )
    change.add_argument(
        "--reset", metavar="NAME", action="append", default=[], help="back to the default; repeat"
    )
    change.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from core.errors import AppError

    session, settings = open_store(args.home)
    args.settings = settings
    try:
        with session:
            return _ACTIONS[args.action](session, args)
    except AppError as exc:
        print(f"glmft tenants {args.action}: {exc.message}")
        return EXIT_NOT_FOUND if exc.http_status == 404 else EXIT_USAGE


def _view(session: Any, settings: Any, tenant_id: str) -> dict[str, Any]:
    from core.team_models import Tenant
    from core.tenants import effective_quotas, usage

    row = session.get(Tenant, tenant_id)
    limits, used = effective_quotas(session, settings, tenant_id), usage(session, tenant_id)
    return {
        "id": tenant_id,
        "name": row.name if row else "",
        "weight": row.weight if row else 1.0,
        "quotas": {q: {"used": used[q], "allowed": limits[q]} for q in limits},
        "overrides": dict(row.quotas) if row else {},
    }


def _print(view: dict[str, Any]) -> None:
    print(f"tenant {view['id']} {view['name']!r} weight {view['weight']:g}")
    for name, figure in view["quotas"].items():
        allowed = "no limit" if figure["allowed"] is None else f"{figure['allowed']:,}"
        mark = " (set)" if name in view["overrides"] else ""
        print(f"  {name:<18} {figure['used']:>14,} of {allowed}{mark}")


def _list(session: Any, args: argparse.Namespace) -> int:
    from sqlmodel import col, select

    from core.team_models import Tenant

    ids = session.exec(select(Tenant.id).order_by(col(Tenant.id))).all()
    views = [_view(session, args.settings, t) for t in ids]
    if args.json:
        print(json.dumps(views))
        return EXIT_OK
    for view in views:
        _print(view)
    return EXIT_OK


def _show(session: Any, args: argparse.Namespace) -> int:
    from core.errors import TenantNotFound
    from core.team_models import Tenant

    if session.get(Tenant, args.tenant) is None:
        raise TenantNotFound(f"tenant {args.tenant} not found")
    view = _view(session, args.settings, args.tenant)
    if args.json:
        print(json.dumps(view))
    else:
        _print(view)
    return EXIT_OK


def _quota(text: str) -> tuple[str, int | None]:
    from core.errors import Invalid

    name, sep, value = text.partition("=")
    if not sep or not (value.isdigit() or value.lower() == "none"):
        raise Invalid(f"--quota {text!r}: write NAME=NUMBER or NAME=none")
    return name.strip(), None if value.lower() == "none" else int(value)


def _set(session: Any, args: argparse.Namespace) -> int:
    from core.errors import Invalid
    from core.keys import check_tenant_id
    from core.tenants import check_quota_overrides, ensure_tenant

    row = ensure_tenant(session, check_tenant_id(args.tenant))
    quotas = {k: v for k, v in row.quotas.items() if k not in args.reset}
    quotas.update(dict(_quota(q) for q in args.quota))
    row.quotas = check_quota_overrides(quotas)
    if args.weight is not None:
        if not 0 < args.weight <= 1000:
            raise Invalid("--weight must be in (0, 1000]")
        row.weight = args.weight
    if args.name is not None:
        row.name = args.name
    session.add(row)
    session.commit()
    if args.quota or args.reset:  # new quotas may let waiting jobs start: wake them
        from api.queue import enqueuer_for
        from api.services.jobs import wake_waiting_jobs

        enqueuer = enqueuer_for(args.settings.resolved_broker_url)
        try:
            wake_waiting_jobs(session, enqueuer, row.id)
        finally:
            enqueuer.close()
    return _show(session, args)


_ACTIONS = {"list": _list, "show": _show, "set": _set}
