"""Packaging: the fixed top-level folders ship as subpackages of presso; importing presso is light."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "presso": "presso",
    "search": "presso/search",
    "spaces": "presso/spaces",
    "cost_models": "presso/cost_models",
    "profilers": "presso/profilers",
    "kernels": "presso/kernels",
    "dashboards": "presso/dashboards",
}


def test_wheel_holds_every_module_under_presso(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("presso-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, package in FOLDERS.items():
        for source in (ROOT / folder).rglob("*.py"):
            relative = source.relative_to(ROOT / folder).as_posix()
            assert f"{package}/{relative}" in names, (
                f"{folder}/{relative} is missing from the wheel"
            )
    assert any(n.endswith("entry_points.txt") for n in names)


def test_import_presso_is_light() -> None:
    code = (
        "import sys, presso, presso.cli, presso.config, presso.search, presso.spaces, presso.store, presso.export\n"
        "heavy = [m for m in ('torch', 'transformers', 'ray', 'optuna', 'tvm', 'triton', 'diffusers', 'torchmetrics', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
