"""Intensity normalisation per modality, described by a small dict stored in each checkpoint.

* CT: a fixed HU window mapped to [0, 1] (``{"kind": "ct_window", "window": [lo, hi]}``);
* MR: robust per-image scaling, the given percentiles of the body voxels mapped to [0, 1]
  (``{"kind": "percentile", "lower": 0.5, "upper": 99.5}``), since MR has no absolute units;
* ultrasound (2D): the same per-image scaling (gain and depth settings change the grey levels).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["DEFAULT_INTENSITY", "BODY_THRESHOLD", "normalize_intensity", "NormalizeIntensityd"]

DEFAULT_INTENSITY: dict[str, dict[str, Any]] = {
    "ct": {"kind": "ct_window", "window": [-200.0, 300.0]},
    "mr": {"kind": "percentile", "lower": 0.5, "upper": 99.5},
    "us": {"kind": "percentile", "lower": 0.5, "upper": 99.5},
}

# On a normalised image, air and MR background sit at (or just above) 0: above this is the body
# (CT: about -175 HU with the default window).
BODY_THRESHOLD = 0.05


def _body(channel: np.ndarray) -> np.ndarray:
    """Voxels brighter than the darkest decile: the body in MR, without the background air."""
    flat = channel.ravel(order="K")  # memory order: no reordering copy of a Fortran-ordered volume
    sample = flat[:: max(1, flat.size // 200_000)]
    return sample[sample > np.percentile(sample, 10)]


def normalize_intensity(image: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """Normalise a (C, ...) float image per channel as ``spec`` says; output float32 in [0, 1]."""
    image = np.asarray(image, dtype=np.float32)
    out = np.empty_like(image)  # the input's memory order: writing across orders is a slow strided copy
    for c, channel in enumerate(image):
        if spec["kind"] == "ct_window":
            lo, hi = (float(v) for v in spec["window"])
        elif spec["kind"] == "percentile":
            body = _body(channel)
            lo, hi = (float(v) for v in np.percentile(body, [spec["lower"], spec["upper"]]))
        else:
            raise ValueError(f"unknown intensity normalisation {spec['kind']!r}")
        scale = np.float32(1.0 / max(hi - lo, 1e-6))
        view = out[c]
        np.subtract(channel, np.float32(lo), out=view)  # in place: no temporaries of a whole CT
        view *= scale
        np.clip(view, 0.0, 1.0, out=view)
    return out


class NormalizeIntensityd(MapTransform):
    """Apply :func:`normalize_intensity` with ``spec`` to ``keys``."""

    def __init__(self, keys: KeysCollection, spec: Mapping[str, Any], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spec = dict(spec)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = normalize_intensity(d[key], self.spec)
        return d
