"""``python -m core.migrate``: bring the configured store to the newest schema (idempotent)."""

from __future__ import annotations

import logging

from core.db import upgrade
from core.settings import get_settings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    url = get_settings().resolved_database_url
    upgrade(url)
    logging.getLogger(__name__).info("store at %s is up to date", url.split("@")[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
