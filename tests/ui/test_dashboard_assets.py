"""The dashboard's files: shipped in the package, uPlot as released on npm, and the address
``glmft up`` prints."""

from __future__ import annotations

import fnmatch
import subprocess
import tomllib
from pathlib import Path

from api.commands.up import dashboard_url
from api.dashboard import UI_DIR

REPO = Path(__file__).resolve().parents[2]
VENDORED = UI_DIR / "vendor" / "uplot"


def test_every_dashboard_file_is_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["api"]
    files = [p.relative_to(UI_DIR.parent).as_posix() for p in UI_DIR.rglob("*") if p.is_file()]
    assert "ui/index.html" in files and "ui/js/main.js" in files
    missing = [f for f in files if not any(fnmatch.fnmatchcase(f, p) for p in patterns)]
    assert not missing, f"not in [tool.setuptools.package-data] api: {missing}"


def test_the_vendored_uplot_is_the_npm_release(tmp_path: Path) -> None:
    # the script that vendored it, run again from the npm registry into a scratch folder
    subprocess.run(["bash", str(REPO / "scripts" / "vendor-uplot.sh"), str(tmp_path)], check=True)
    fetched = sorted(p.name for p in tmp_path.iterdir())
    assert fetched == ["LICENSE", "uPlot.esm.js", "uPlot.min.css"]
    assert sorted(p.name for p in VENDORED.iterdir()) == fetched
    for name in fetched:
        assert (VENDORED / name).read_bytes() == (tmp_path / name).read_bytes(), name
    assert "MIT License" in (VENDORED / "LICENSE").read_text(encoding="utf-8")


def test_glmft_up_prints_a_reachable_dashboard_address() -> None:
    assert dashboard_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/ui/"
    assert dashboard_url("0.0.0.0", 9000) == "http://127.0.0.1:9000/ui/"  # noqa: S104
    assert dashboard_url("::1", 8000) == "http://[::1]:8000/ui/"
    assert dashboard_url("gpu-node", 8000) == "http://gpu-node:8000/ui/"
