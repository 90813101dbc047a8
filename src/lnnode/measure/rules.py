"""Rule-based node categories a radiologist would give, and the N-stage hint of a case.

* ``size_10mm``: short axis >= 10 mm is suspicious (the RECIST / common CT criterion).
* ``morphology``: in the spirit of the ESGAR rectal MRI criteria: a node of short axis < 5 mm is
  suspicious only with all three of round shape, irregular border and heterogeneous signal; 5-9 mm
  with at least two; >= 9 mm always.

Without a measurement (no delineation) both rules say ``indeterminate``.
"""

from __future__ import annotations

from typing import Any

from lnnode.contracts import STAGE_HINTS

__all__ = ["size_rule", "morphology_rule", "node_rules", "n_stage_hint"]

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


def n_stage_hint(n_suspicious: int) -> str:
    """N0 without suspicious nodes, N1 with 1-3, N2 with 4 or more (a hint, not a staging)."""
    if n_suspicious < 0:
        raise ValueError(f"a count of nodes cannot be negative, got {n_suspicious}")
    return STAGE_HINTS[0] if n_suspicious == 0 else STAGE_HINTS[1] if n_suspicious <= 3 else STAGE_HINTS[2]
