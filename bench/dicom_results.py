"""DICOM results benchmark: the time to make a reviewed case's SEG + SR at real size, on the CPU.

    python bench/dicom_results.py                     # about 1 min on 2 cores

A 512 x 512 x 160 CT phantom at 0.78 x 0.78 x 2.0 mm (oblique), written as a DICOM series (160 files), its
ground-truth nodes as the review; times each step of ``lnnode.dicom.export_label``: reading the series (headers
and voxels), delineating and measuring every node, building the SEG and the SR with highdicom, and writing
them. What the PACS write-back adds on top is one STOW-RS request of the two files (their sizes are printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # runs from a checkout without installing

from lnnode.dicom.export import save_report, source_series  # noqa: E402
from lnnode.dicom.findings import findings_from_label  # noqa: E402
from lnnode.dicom.report import make_report  # noqa: E402
from lnnode.dicom.series import write_series  # noqa: E402
from lnnode.io.image import read_image  # noqa: E402
from lnnode.phantoms import synthesize  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 160])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.78, 0.78, 2.0])
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthesize(root / "studies", 1, modality="ct", seed=args.seed, shape=tuple(args.shape),
                   spacing=tuple(args.spacing), direction="oblique")  # fmt: skip
        label = json.loads((root / "studies" / "labels" / "final" / "ct_000.json").read_text())
        volume, geometry = read_image(root / "studies" / "ct_000.nii.gz")
        write_series(volume, geometry, root / "series", "CT")
        times: dict[str, float] = {}
        t = time.perf_counter()
        source = source_series(root / "series", root / "out")
        times["read series"] = time.perf_counter() - t
        t = time.perf_counter()
        findings = findings_from_label(label, None, source.volume, source.geometry, source.modality)
        times["delineate + measure"] = time.perf_counter() - t
        t = time.perf_counter()
        report = make_report(source.datasets, source.geometry, findings, reviewed=True, reviewer="Bench^")
        times["SEG + SR (highdicom)"] = time.perf_counter() - t
        t = time.perf_counter()
        exported = save_report(root / "out", report, source)
        times["write files"] = time.perf_counter() - t
        sizes = {p.name: p.stat().st_size for p in (exported.seg, exported.sr) if p is not None}
    print(f"{'x'.join(map(str, args.shape))} CT series, {len(findings)} nodes "
          f"({sum(f.delineated for f in findings)} delineated):")  # fmt: skip
    for step, seconds in times.items():
        print(f"  {step:24s} {seconds:6.2f} s")
    files = ", ".join(f"{name} {size / 1e3:.0f} kB" for name, size in sizes.items())
    print(f"  {'total':24s} {sum(times.values()):6.2f} s; files: {files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
