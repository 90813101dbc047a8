"""Settings of the lymph-node phantoms: grid, direction presets, modality, background, and the tissue codes.

The size and shape distributions of the nodes live in :mod:`.nodes` next to the code that samples
them; their calibration against the real ULS23 node masks is in ``docs/phantoms.md``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path

import numpy as np

from lnnode.geometry import ImageGeometry

__all__ = [
    "MODALITIES",
    "BACKGROUNDS",
    "DIRECTION_PRESETS",
    "Tissue",
    "PhantomConfig",
    "parse_direction",
    "default_real_data_dir",
    "PhantomError",
]

MODALITIES = ("ct", "mr")
BACKGROUNDS = ("synthetic", "real")
REAL_DATA_ENV = "LNNODE_REAL_DATA"


class PhantomError(ValueError):
    """Settings or data that cannot make a phantom (bad option, missing real data...)."""


class Tissue(IntEnum):
    """Codes of the tissue map a synthetic case carries (``Case.tissue``); 0 is air."""

    AIR = 0
    SUBCUTANEOUS_FAT = 1
    MUSCLE = 2
    VISCERAL_FAT = 3
    BONE = 4
    FLUID = 5  # intervertebral disc, cerebrospinal fluid
    ORGAN = 6
    VESSEL = 7
    NODE = 8


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [x for x in range(3) if x != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


_RAS = np.diag([-1.0, -1.0, 1.0])

#: Direction matrices (columns: world direction of the index axes i, j, k), row-major 9-tuples.
DIRECTION_PRESETS: dict[str, tuple[float, ...]] = {
    "LPS": tuple(np.eye(3).ravel()),
    # NIfTI/RAS-stored volumes as SimpleITK reads them: i runs to the patient's right, j anterior
    "RAS": tuple(_RAS.ravel()),
    # the usual radiological NIfTI: only j flipped
    "LAS": tuple(np.diag([1.0, -1.0, 1.0]).ravel()),
    # a coronal acquisition: i left, j inferior, k posterior (world z lies on the index axis j)
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0),
    # a tilted gantry: RAS flips, then 15 degrees about the world x axis and 10 about z
    "oblique": tuple((_rotation(2, 10.0) @ _rotation(0, 15.0) @ _RAS).ravel()),
}


def parse_direction(spec: str | Sequence[float]) -> tuple[float, ...]:
    """A direction from a preset name (see DIRECTION_PRESETS) or 9 numbers (row-major, orthonormal)."""
    if isinstance(spec, str):
        key = spec.strip()
        for name, value in DIRECTION_PRESETS.items():
            if key.lower() == name.lower():
                return value
        parts = key.replace(",", " ").split()
        if len(parts) != 9:
            raise PhantomError(f"--direction {spec!r}: give a preset ({', '.join(DIRECTION_PRESETS)}) or 9 numbers")
        try:
            spec = [float(p) for p in parts]
        except ValueError:
            raise PhantomError(f"--direction {spec!r}: not a preset and not 9 numbers") from None
    d = np.asarray(spec, dtype=float).reshape(-1)
    if d.size != 9:
        raise PhantomError(f"a direction needs 9 numbers, got {d.size}")
    m = d.reshape(3, 3)
    if not np.allclose(m.T @ m, np.eye(3), atol=1e-4):
        raise PhantomError(f"direction {d.tolist()} is not orthonormal (columns must be unit, perpendicular)")
    return tuple(float(v) for v in d)


def default_real_data_dir() -> Path:
    """``$LNNODE_REAL_DATA``, else ``<repository>/../shared/data/real``.

    This file is ``<repository>/src/lnnode/phantoms/config.py``, so the repository root is three
    folders up.
    """
    env = os.environ.get(REAL_DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "real"


@dataclass(frozen=True)
class PhantomConfig:
    """What to make. ``shape``/``spacing``/``direction``/``center`` apply to synthetic backgrounds; a
    real background keeps its own grid.

    ``center`` is the world LPS point at the middle of the field of view: the anatomy is fixed in world
    coordinates (body axis along world z through x = y = 0), so two configs that differ only in
    direction, or that share a field of view, show the same anatomy and nodes.
    """

    modality: str = "ct"
    shape: tuple[int, int, int] = (160, 160, 64)
    spacing: tuple[float, float, float] = (2.0, 2.0, 3.0)
    direction: tuple[float, ...] = DIRECTION_PRESETS["RAS"]
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    background: str = "synthetic"
    real_data: str | None = None
    real_shapes: float | None = None  # None: 0 for synthetic, 0.5 for real backgrounds
    noise: float = 1.0  # noise scale; 0 renders noise-free images (tests, figures)
    backgrounds: tuple[str, ...] | None = None  # real backgrounds drawn from (None: one per patient)
    hard_negatives: int = 8  # real backgrounds with a label map: hard-negative boxes per case
    size_matched: bool = False  # both classes draw the short axis from one distribution

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise PhantomError(f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        if self.background not in BACKGROUNDS:
            raise PhantomError(f"background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if self.background == "real" and self.modality != "ct":
            raise PhantomError("real backgrounds are CT volumes: use --modality ct with --background real")
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 8:
            raise PhantomError(f"shape needs 3 sizes of at least 8 voxels, got {self.shape}")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or not all(math.isfinite(s) and 0.05 <= s <= 20.0 for s in spacing):
            raise PhantomError(f"spacing needs 3 values between 0.05 and 20 mm, got {self.spacing}")
        if self.real_shapes is not None and not 0.0 <= float(self.real_shapes) <= 1.0:
            raise PhantomError(f"real_shapes is a fraction in [0, 1], got {self.real_shapes}")
        if not 0.0 <= float(self.noise) <= 10.0:
            raise PhantomError(f"noise scale must be in [0, 10], got {self.noise}")
        if not 0 <= int(self.hard_negatives) <= 64:
            raise PhantomError(f"hard_negatives must be 0..64, got {self.hard_negatives}")
        if self.backgrounds is not None:
            from lnnode.phantoms.realct import check_backgrounds

            object.__setattr__(self, "backgrounds", check_backgrounds(self.backgrounds))
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "direction", parse_direction(self.direction))
        object.__setattr__(self, "center", tuple(float(c) for c in self.center))

    @property
    def real_shape_fraction(self) -> float:
        if self.real_shapes is not None:
            return float(self.real_shapes)
        return 0.5 if self.background == "real" else 0.0

    @property
    def background_names(self) -> tuple[str, ...]:
        from lnnode.phantoms.realct import DEFAULT_BACKGROUNDS

        return self.backgrounds or DEFAULT_BACKGROUNDS

    @property
    def real_data_dir(self) -> Path:
        return Path(self.real_data).expanduser() if self.real_data else default_real_data_dir()

    def geometry(self) -> ImageGeometry:
        """The synthetic grid: ``shape``/``spacing``/``direction`` centred on ``center``."""
        d = np.asarray(self.direction).reshape(3, 3)
        half = (np.asarray(self.shape) - 1) / 2.0 * np.asarray(self.spacing)
        origin = np.asarray(self.center) - d @ half
        return ImageGeometry(self.shape, self.spacing, tuple(origin), self.direction)

    def replace(self, **changes) -> PhantomConfig:
        return replace(self, **changes)
