"""The demo models' training phantoms: made once per recipe, remade when the recipe changes."""

from __future__ import annotations

from lnnode.phantoms import synthesize
from lnnode.training import DEMO_RECIPES, _demo_phantoms

TINY = {"modality": "ct", "shape": (48, 48, 16), "spacing": (2.0, 2.0, 3.0)}


def test_a_folder_of_the_same_recipe_is_reused_and_another_recipe_remakes_it(tmp_path):
    calls = []

    def counting(studies, n, **options):
        calls.append((n, options))
        return synthesize(studies, n, **options)

    plan = [(1, {**TINY, "seed": 1}), (1, {**TINY, "seed": 2, "size_matched": True, "prefix": "sm_"})]
    studies = _demo_phantoms(tmp_path / "studies", plan, counting)
    made = sorted(p.name for p in studies.glob("*.nii.gz"))
    assert made == ["ct_000.nii.gz", "sm_000.nii.gz"] and len(calls) == 2
    assert _demo_phantoms(studies, plan, counting) == studies and len(calls) == 2, "same recipe: reused"
    other = [(2, {**TINY, "seed": 1})]
    _demo_phantoms(studies, other, counting)
    assert len(calls) == 3 and sorted(p.name for p in studies.glob("*.nii.gz")) == ["ct_000.nii.gz", "ct_001.nii.gz"]


def test_the_classifier_recipe_holds_size_matched_nodes_on_synthetic_and_real_backgrounds():
    parts = DEMO_RECIPES["lymph_node_classification"]
    assert abs(sum(share for share, _ in parts) - 1.0) < 1e-9
    kinds = {(o.get("background", "synthetic"), bool(o.get("size_matched"))) for _, o in parts}
    assert kinds == {("synthetic", False), ("synthetic", True), ("real", False), ("real", True)}
