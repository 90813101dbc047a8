"""Rule-based node categories a radiologist would give, and the N-stage hint of a case.

* ``size_10mm``: short axis >= 10 mm is suspicious (the RECIST / common CT criterion).
* ``morphology``: in the spirit of the ESGAR rectal MRI criteria: a node of short axis < 5 mm is
  suspicious only with all three of round shape, irregular border and heterogeneous signal; 5-9 mm
  with at least two; >= 9 mm always.

Without a measurement (no delineation) both rules say ``indeterminate``.

On a 2D image (ultrasound), from the pipeline's own delineation, as a reader describes a lesion or node there:

* ``shape``: not oval (round, short/long axis >= 0.8, or irregular) is suspicious;
* ``orientation``: taller than wide (deeper than across) is suspicious;
* ``margin``: not circumscribed (solidity < 0.9) is suspicious;
* ``size_10mm``: as above, where the pixel spacing is known (``indeterminate`` on a picture in pixels);
* ``morphology``: suspicious when any of shape, orientation and margin is.
"""

from __future__ import annotations

from typing import Any

from lnnode.contracts import STAGE_HINTS
from lnnode.measure.delineation import IRREGULAR_SOLIDITY, ROUND_RATIO

__all__ = ["size_rule", "morphology_rule", "node_rules", "planar_rules", "n_stage_hint", "PLANAR_RULES"]

PLANAR_RULES = ("shape", "orientation", "margin", "size_10mm", "morphology")

SUSPICIOUS, NOT_SUSPICIOUS, INDETERMINATE = "suspicious", "not_suspicious", "indeterminate"


def size_rule(short_axis_mm: float | None) -> str:
    if short_axis_mm is None:
        return INDETERMINATE
    return SUSPICIOUS if short_axis_mm >= 10.0 else NOT_SUSPICIOUS


def morphology_rule(short_axis_mm: float | None, round: bool, irregular_border: bool, heterogeneous: bool) -> str:
    if short_axis_mm is None:
        return INDETERMINATE
    n = int(bool(round)) + int(bool(irregular_border)) + int(bool(heterogeneous))
    if short_axis_mm >= 9.0:
        return SUSPICIOUS
    needed = 2 if short_axis_mm >= 5.0 else 3
    return SUSPICIOUS if n >= needed else NOT_SUSPICIOUS


def node_rules(measurement: Any | None) -> dict[str, str]:
    """Both rules for a :class:`lnnode.measure.delineation.NodeMeasurement` (or None: indeterminate)."""
    if measurement is None:
        return {"size_10mm": INDETERMINATE, "morphology": INDETERMINATE}
    f = measurement.features
    return {
        "size_10mm": size_rule(measurement.short_axis_mm),
        "morphology": morphology_rule(
            measurement.short_axis_mm,
            f.get("round", False),
            f.get("irregular_border", False),
            f.get("heterogeneous", False),
        ),
    }


def _category(suspicious: bool) -> str:
    return SUSPICIOUS if suspicious else NOT_SUSPICIOUS


def planar_rules(measurement: Any | None, spacing_known: bool) -> dict[str, str]:
    """The 2D rules for a :class:`lnnode.measure.planar.LesionMeasurement` (None: all indeterminate)."""
    if measurement is None:
        return dict.fromkeys(PLANAR_RULES, INDETERMINATE)
    irregular = measurement.solidity < IRREGULAR_SOLIDITY
    rules = {
        "shape": _category(measurement.axis_ratio >= ROUND_RATIO or irregular),
        "orientation": _category(measurement.taller_than_wide),
        "margin": _category(irregular),
        "size_10mm": size_rule(measurement.short_axis) if spacing_known else INDETERMINATE,
    }
    rules["morphology"] = _category(SUSPICIOUS in (rules["shape"], rules["orientation"], rules["margin"]))
    return rules


def n_stage_hint(n_suspicious: int) -> str:
    """N0 without suspicious nodes, N1 with 1-3, N2 with 4 or more (a hint, not a staging)."""
    if n_suspicious < 0:
        raise ValueError(f"a count of nodes cannot be negative, got {n_suspicious}")
    return STAGE_HINTS[0] if n_suspicious == 0 else STAGE_HINTS[1] if n_suspicious <= 3 else STAGE_HINTS[2]
