"""The app's ``--conf`` options (documented in docs/reference.md), parsed once and checked at start-up.

A bad value stops the server with a message naming the option; per-model options (thresholds, TTA...)
are read by the task configs in ``lib/configs``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from lib.server.guards import DEFAULT_MAX_UPLOAD_MB

__all__ = ["AppOptions"]


def _flag(conf: dict[str, str], key: str, default: str) -> bool:
    return str(conf.get(key, default)).lower() not in ("false", "0", "no")


def _number(conf: dict[str, str], key: str, default: float | None, kind: type = float, what: str = "") -> Any:
    """``--conf key`` as a finite ``kind`` (``default`` when not given); else a ValueError naming the option."""
    raw = conf.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
        if not math.isfinite(value):
            raise ValueError
    except (ValueError, OverflowError):
        expected = what or ("an integer" if kind is int else "a finite number")
        raise ValueError(f"--conf {key}: {expected}, got {raw!r}") from None
    return value


def _json_object(conf: dict[str, str], key: str, example: str) -> dict[str, Any]:
    try:
        value = json.loads(conf.get(key) or "{}")
    except ValueError as e:
        raise ValueError(f"--conf {key}: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--conf {key} must be a JSON object, e.g. '{example}'")
    return value


def _names(conf: dict[str, str], key: str) -> list[str]:
    return [n.strip() for n in (conf.get(key) or "").split(",") if n.strip()]


@dataclass
class AppOptions:
    model_dir: str
    demo_dir: str | None
    models: list[str] | None  # None: every model the app has
    max_upload_bytes: int
    max_image_voxels: int | None = None
    auto_train_every: int = 0
    auto_train_models: list[str] = field(default_factory=list)
    auto_train_params: dict[str, Any] = field(default_factory=dict)
    # a PACS as --studies (lib/datastore/dicomweb.py)
    dicomweb_modalities: tuple[str, ...] = ("CT", "MR")
    dicomweb_search: dict[str, Any] = field(default_factory=dict)
    dicomweb_cache: str | None = None  # None: ~/.cache/lnnode/dicomweb/<hash of the URL>
    dicomweb_timeout_s: float = 30.0
    dicomweb_refresh_s: float = 60.0

    @classmethod
    def from_conf(cls, conf: dict[str, str], app_dir: str) -> AppOptions:
        if "al_novelty_weight" in conf:  # a config from before: say so rather than ignore it
            raise ValueError(
                "--conf al_novelty_weight was removed: the novelty term helped on no benchmark (docs/loop.md); "
                "before any model, uncertain and badge now serve typical cases of the kinds not read yet"
            )
        auto_params = _json_object(conf, "auto_train_params", '{"max_epochs": 5}')
        wanted = conf.get("models", "all")
        upload_mb = _number(conf, "max_upload_mb", DEFAULT_MAX_UPLOAD_MB, what="a number of megabytes")
        return cls(
            # trained models go to --conf model_dir (default <app>/model); the demo weights ship in <app>/model/demo
            model_dir=os.path.realpath(conf.get("model_dir") or os.path.join(app_dir, "model")),
            demo_dir=os.path.join(app_dir, "model", "demo") if _flag(conf, "demo_weights", "true") else None,
            models=None if wanted == "all" else _names(conf, "models"),
            # 0 turns the upload check off
            max_upload_bytes=int(upload_mb * 2**20),
            max_image_voxels=_number(conf, "max_image_voxels", None, int),
            auto_train_every=_number(conf, "auto_train_every", 0, int),
            auto_train_models=_names(conf, "auto_train_models"),
            auto_train_params=auto_params,
            dicomweb_modalities=tuple(m.upper() for m in _names(conf, "dicomweb_modalities")) or ("CT", "MR"),
            dicomweb_search=_json_object(conf, "dicomweb_search", '{"StudyDate": "20260101-"}'),
            dicomweb_cache=conf.get("dicomweb_cache") or None,
            dicomweb_timeout_s=_number(conf, "dicomweb_timeout_s", 30.0),
            dicomweb_refresh_s=_number(conf, "dicomweb_refresh_s", 60.0),
        )
