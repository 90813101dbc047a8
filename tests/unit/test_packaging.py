"""The wheel: it carries the library, the MONAI Label app and the demo weights, and an installed wheel finds
its app (``lnnode app-dir``) without the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from ..conftest import REPO

_IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "logs")


def _ignored(folder: str, names: list[str]) -> set[str]:
    """What a clean clone lacks: the venv, build output, caches, and the demo studies at the top."""
    return set(_IGNORED(folder, names)) | ({"demo", "bench"} & set(names) if Path(folder) == REPO else set())


def test_the_wheel_holds_the_library_the_app_and_the_demo_weights(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=_ignored)  # a clean tree: no stale build folder goes into the wheel
    for trained in (source / "apps" / "lnnode" / "model").glob("*.pt"):
        trained.unlink()  # models trained in the checkout are not shipped
    out = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."]
    subprocess.run(build, cwd=source, check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("lnnode-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "lnnode/__init__.py",
        "lnnode/appdir.py",
        "lnnode/contracts/schema.py",
        "lnnode/phantoms/generate.py",
        "lnnode/app/main.py",
        "lnnode/app/lib/configs/__init__.py",
        "lnnode/app/lib/server/guards.py",
        "lnnode/app/model/demo/lymph_node_detection.pt",
        "lnnode/app/model/demo/lymph_node_classification.pt",
    ):
        assert expected in names, f"{expected} is not in {wheel.name}"
    assert not [n for n in names if n.startswith(("lnnode/lib/", "tests/", "lib/"))], "one name per module"
    assert not [n for n in names if n.startswith("lnnode/app/model/") and "/demo/" not in n]

    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    where = subprocess.run(
        [sys.executable, "-c", "from lnnode.cli import main; main(['app-dir'])"],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    app_dir = Path(where.stdout.strip())
    assert app_dir == target / "lnnode" / "app" and (app_dir / "main.py").is_file(), where.stdout
