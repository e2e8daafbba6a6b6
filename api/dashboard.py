"""The web dashboard: static files under ``/ui`` (``api/ui/``, plain ES modules shipped in the
package, no build step) and ``/`` redirecting there.

The pages call the same REST routes as any client, with the API key the user pasted (kept in
the browser's localStorage, sent as ``Authorization: Bearer``), so the files themselves are
public. A Content-Security-Policy keeps every script, style, image and connection on this
origin: nothing is loaded from outside the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_DIR = Path(__file__).resolve().parent / "ui"
UI_PATH = "/ui"
#: uPlot sets element styles from script, hence 'unsafe-inline' for styles only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # revalidate with the ETag: an upgraded package serves its new files at once
    "Cache-Control": "no-cache",
}


class DashboardFiles(StaticFiles):
    """``StaticFiles`` with the dashboard's security and caching headers."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(HEADERS)
        return response


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/ui/`` and send ``/`` there."""

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{UI_PATH}/", status_code=307)

    app.mount(UI_PATH, DashboardFiles(directory=UI_DIR, html=True), name="ui")
