"""Deterministic lymph-node phantoms (``lnnode synth``): CT in HU and T2-like MR, synthetic or real CT
backgrounds, benign and metastatic nodes with ground truth (instance mask, label, manifest).

Public entry points: :func:`synthesize` (write a studies folder), :func:`make_case` (one case in
memory), and :func:`add_synth_arguments` / :func:`run_synth` for the command line.
"""

from __future__ import annotations

from lnnode.phantoms.cli import add_synth_arguments, run_synth
from lnnode.phantoms.config import (
    DIRECTION_PRESETS,
    PhantomConfig,
    PhantomError,
    Tissue,
    default_real_data_dir,
    parse_direction,
)
from lnnode.phantoms.generate import MANIFEST_NAME, Case, case_streams, make_case, synthesize, write_case

__all__ = [
    "add_synth_arguments",
    "run_synth",
    "synthesize",
    "make_case",
    "write_case",
    "case_streams",
    "Case",
    "PhantomConfig",
    "PhantomError",
    "Tissue",
    "DIRECTION_PRESETS",
    "MANIFEST_NAME",
    "parse_direction",
    "default_real_data_dir",
]
