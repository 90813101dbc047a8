"""Where the MONAI Label app lives, and how code outside the server uses its tasks.

MONAI Label loads the app (``main.py`` + ``lib/``) with the app folder on ``sys.path``, so the app's
own modules are ``lib.*``. The ``lnnode`` command, the benchmarks and the tests reach them under that
same name through :func:`app_module`: every module has one name, in the server and outside it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["APP_DIR", "DEMO_MODEL_DIR", "use_app", "app_module"]


def _find_app_dir() -> Path:
    packaged = Path(__file__).resolve().parent / "app"  # a wheel carries the app inside the package
    if (packaged / "main.py").is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "apps" / "lnnode"  # a checkout (editable install)


APP_DIR = _find_app_dir()
DEMO_MODEL_DIR = APP_DIR / "model" / "demo"


def use_app() -> Path:
    """Put the app folder on ``sys.path`` (as MONAI Label does) and return it."""
    if not (APP_DIR / "main.py").is_file():
        raise FileNotFoundError(f"the lnnode MONAI Label app is not at {APP_DIR}")
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    return APP_DIR


def app_module(name: str) -> ModuleType:
    """The app's module ``lib.<name>`` (e.g. ``"trainers"``, ``"datastore"``), imported as the server does."""
    use_app()
    return importlib.import_module(f"lib.{name}")
