"""Request parameters of the infer tasks: one table of what each may be, checked before any work.

A value of the wrong type or out of range answers 400 naming the parameter (MONAI Label would pass it
on and fail with a 500 somewhere inside a model).
"""

from __future__ import annotations

import re
from typing import Any

from .errors import RequestError

__all__ = ["INFER_PARAMS", "check_infer_params"]

_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")

# name -> (kind, low, high); ranges are inclusive
INFER_PARAMS: dict[str, tuple] = {
    "score_thresh": ("float", 0.0, 1.0),
    "nms_thresh": ("float", 0.0, 1.0),
    "max_boxes": ("int", 1, 10_000),
    "tta": ("int", 1, 8),
    "p_thresh": ("float", 0.0, 1.0),
    "amp": ("bool",),
    "crop_to_body": ("bool",),
    "saliency": ("bool",),
    "device": ("device",),
}


def _parse(name: str, value: Any, spec: tuple) -> Any:
    kind = spec[0]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in _BOOLEANS:
            return _BOOLEANS[str(value).lower()]
        raise RequestError(f"{name}: must be true or false, got {value!r}")
    if kind == "device":
        if isinstance(value, str) and _DEVICE.match(value):
            return value
        raise RequestError(f"{name}: must be 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    try:
        number = float(value) if kind == "float" else int(value)
        if isinstance(value, bool) or (kind == "int" and float(value) != number):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        expected = "a number" if kind == "float" else "an integer"
        raise RequestError(f"{name}: must be {expected}, got {value!r}") from None
    low, high = spec[1], spec[2]
    if not low <= number <= high:
        raise RequestError(f"{name}: must be between {low} and {high}, got {value!r}")
    return number


def check_infer_params(request: dict[str, Any]) -> dict[str, Any]:
    """The known parameters the request gives, as typed values (bool, int, float, device string).

    Raises RequestError (400) naming a parameter with a bad value; empty values mean the default and are
    left out.
    """
    typed = {}
    for name, spec in INFER_PARAMS.items():
        value = request.get(name)
        if value is not None and value != "":
            typed[name] = _parse(name, value, spec)
    return typed
