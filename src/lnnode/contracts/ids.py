"""Image ids and label tags: plain file-name stems, so that no id can name a path outside the studies folder."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["InvalidName", "check_name"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


class InvalidName(ValueError):
    """An id or tag with a path separator, '..', a leading dot or other characters a file name should not have."""


def check_name(name: Any, what: str) -> str:
    """``name`` if it is a plain file-name stem (no path, no '..'); else :class:`InvalidName` naming ``what``."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise InvalidName(
            f"invalid {what} {name!r}: use letters, digits, '.', '_', '+', '-' (no path separators or '..')"
        )
    return name
