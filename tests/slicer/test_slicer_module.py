"""The module file itself (``LymphNodeReview.py``) outside Slicer: its Logic class and its own self-test
(``LymphNodeReviewTest``) run on a real MRML scene (slicer-core) against the real lnnode server.

Only Slicer's application layer is stood in for, as it cannot run here: the Qt GUI (``qt`` is an empty
module: the Widget is not built), the IO manager behind ``slicer.util.loadVolume``/``saveNode`` (here
MRML's own volume storage node reads and writes the files), the slice views (jumps and overlays are
recorded; a PNG is handed to MRML's reader as the NRRD SimpleITK makes of it, since slicer-core's ITK reads no
PNG) and the scripted-module base classes (the parameter node is a real
``vtkMRMLScriptedModuleNode`` in the scene). What this leaves to a run inside Slicer: the panel's
widgets and shortcuts, the slice views, Slicer's IO manager.
"""

from __future__ import annotations

import importlib
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lnnode.geometry import ImageGeometry
from lnnode.phantoms import synthesize

from ..conftest import REPO, rotation

slicer = pytest.importorskip("slicer", reason="slicer-core not installed (pip install -e '.[slicer]')")
if not hasattr(slicer, "vtkMRMLMarkupsROINode"):
    pytest.skip("this 'slicer' module has no MRML markups", allow_module_level=True)

pytestmark = pytest.mark.server
MODULE_DIR = REPO / "slicer_module" / "LymphNodeReview"


class _Recorder:
    """Slice-view calls the module makes (nothing to draw here): kept to be checked."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


@pytest.fixture
def slicer_app(monkeypatch):
    """``slicer`` as a module running inside Slicer sees it: a scene, an app, the scripted-module bases."""
    import vtk

    scene = slicer.vtkMRMLScene()  # registers the MRML node classes the module uses (markups, ROIs...)
    selection = scene.AddNewNodeByClass("vtkMRMLSelectionNode")
    views = _Recorder()

    def load_volume(path, properties=None):
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        if str(path).lower().endswith((".png", ".jpg", ".jpeg")):
            # slicer-core's ITK has no PNG/JPEG reader (Slicer's has): the picture as ITK reads it, in NRRD
            from lnnode.io.image import read_sitk

            path = Path(str(path) + ".nrrd")
            sitk.WriteImage(read_sitk(str(path)[: -len(".nrrd")], allow_2d=True), str(path))
        storage.SetFileName(str(path))
        if not storage.ReadData(volume):
            raise RuntimeError(f"could not read {path}")
        volume.SetAndObserveStorageNodeID(storage.GetID())
        volume.CreateDefaultDisplayNodes()
        return volume

    def save_node(node, path, properties=None):
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(path))
        return bool(storage.WriteData(node))

    class App:
        def applicationLogic(self):  # noqa: N802 - Slicer's naming
            return types.SimpleNamespace(GetSelectionNode=lambda: selection)

    class ScriptedLoadableModuleLogic:
        def getParameterNode(self):  # noqa: N802
            node = scene.GetSingletonNode("LymphNodeReview", "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag("LymphNodeReview")
                node = scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=0):  # noqa: N802
            pass

    bases = types.ModuleType("slicer.ScriptedLoadableModule")
    bases.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {"__init__": lambda self, parent: None})
    bases.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    bases.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    bases.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", bases)
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", App(), raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(markups=types.SimpleNamespace(logic=lambda: views)),
                        raising=False)  # fmt: skip
    monkeypatch.setattr(slicer.util, "loadVolume", load_volume)
    monkeypatch.setattr(slicer.util, "saveNode", save_node)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", views.setSliceViewerLayers)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    sys.modules.pop("LymphNodeReview", None)
    module = importlib.import_module("LymphNodeReview")
    yield types.SimpleNamespace(module=module, scene=scene, views=views, vtk=vtk)
    sys.modules.pop("LymphNodeReview", None)


@pytest.fixture
def review_server(start_server, tmp_path):
    studies = tmp_path / "studies"
    # an oblique, anisotropic CT phantom: the next case the strategy serves
    direction = rotation("z", 20) @ np.diag([-1.0, 1.0, 1.0])
    synthesize(studies, 1, modality="ct", seed=31, shape=(96, 96, 32), spacing=(0.9, 1.1, 2.5),
               direction=tuple(direction.ravel()), label_tag="truth")  # fmt: skip
    return start_server(studies, model_dir=str(tmp_path / "models"), device="cpu")


def test_the_module_self_test_passes_on_a_real_scene_against_the_real_server(slicer_app, review_server, monkeypatch):
    monkeypatch.setenv("LNNODE_TEST_SERVER", review_server.url)
    test = slicer_app.module.LymphNodeReviewTest("test_review_round_trip")
    result = unittest.TestResult()
    test.run(result)
    assert result.wasSuccessful(), result.errors + result.failures
    status, info = review_server.request("GET", "/datastore/label/info?label=lnnode_selftest&tag=final")
    assert status == 200 and info["review"]["added"] == 1, info


def test_the_logic_reviews_the_next_case_in_the_scene(slicer_app, review_server):
    module, scene = slicer_app.module, slicer_app.scene
    logic = module.LymphNodeReviewLogic()
    assert "lymph_node_pipeline" in logic.connect(review_server.url)["models"]
    image_id = logic.load_next_case("uncertain")
    assert image_id == "ct_000" and logic.volume.GetImageData().GetDimensions() == (96, 96, 32)
    session = logic.run({"score_thresh": 0.01, "saliency": True})
    assert session.nodes, "the demo detector finds nodes on a CT phantom"
    logic.show_boxes()
    assert set(logic.rois) == {n.id for n in session.nodes}

    # the reader: accepts the first node, moves its box in the scene, places a new one, rejects another
    first = session.nodes[0]
    session.accept(first.id)
    roi = logic.rois[first.id]
    center = [0.0, 0.0, 0.0]
    roi.GetCenter(center)
    # a move in the views, then undo: the box goes back, the node stays accepted
    roi.SetCenter(center[0] + 7.0, center[1], center[2])
    assert logic.undo()
    back = [0.0, 0.0, 0.0]
    logic.rois[first.id].GetCenter(back)
    assert np.allclose(back, center, atol=1e-6) and logic.session.node(first.id).status == "accepted"
    roi = logic.rois[first.id]
    roi.SetCenter(center[0] + 3.0, center[1], center[2])  # R+ in RAS
    if len(session.nodes) > 1:
        session.reject(session.nodes[1].id)
    geometry = ImageGeometry.from_sitk(sitk.ReadImage(str(review_server.studies / "ct_000.nii.gz")))
    middle_lps = geometry.index_to_world((np.array(geometry.shape) - 1) / 2)
    added = logic.add_box_at([-middle_lps[0], -middle_lps[1], middle_lps[2]])
    # undo removes the added box and nothing else (the move made in the scene stays)
    assert logic.undo() and added not in logic.rois and first.id in logic.rois
    added = logic.add_box_at([-middle_lps[0], -middle_lps[1], middle_lps[2]])
    logic.jump_to(added)
    assert slicer_app.views.calls[-1][0] == "JumpSlicesToLocation"
    if first.id in logic.saliency_paths:
        assert logic.show_saliency(first.id)

    answer = logic.submit("dr.scene")
    assert answer["review"]["added"] == 1 and answer["review"]["edited"] >= 1, answer
    label = review_server.request("GET", "/datastore/label?label=ct_000&tag=final")[1]
    moved = next(n for n in label["nodes"] if n.get("from_node") == first.id)
    assert moved["center"][0] == pytest.approx(first.model_center[0] - 3.0, abs=1e-3), "R+ in RAS is L- in LPS"

    # the review is kept in the scene's parameter node: a new logic (a restarted module) gets it back
    again = module.LymphNodeReviewLogic().restore_review_from_scene()
    assert again is not None and [n.status for n in again.nodes] == [n.status for n in logic.session.nodes]
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == len(logic.session.nodes)  # rejected: hidden


def test_the_logic_reviews_a_2d_ultrasound_case(slicer_app, start_server, tmp_path):
    """A 2D case (a PNG): the 2D pipeline's boxes with the positive class's name, axes in pixels, corrections sent."""
    from lnnode.contracts import CLASSIFICATION_2D, DETECTION_2D
    from lnnode.phantoms.ultrasound import synthesize_us
    from lnnode.training import train_model

    labelled, studies, models = tmp_path / "labelled", tmp_path / "studies", tmp_path / "models"
    synthesize_us(labelled, 4, seed=6)
    synthesize_us(studies, 2, seed=7, label_tag="truth")
    tiny = {"epochs": 1, "init": "scratch", "val_split": 0.0}
    train_model(DETECTION_2D, labelled, models, **tiny, extra={"patches_per_image": 1, "publish": "always"})
    train_model(CLASSIFICATION_2D, labelled, models, **tiny, extra={"positive_class": "malignant", "publish": "always"})
    server = start_server(studies, model_dir=str(models), device="cpu", demo_weights="false")

    logic = slicer_app.module.LymphNodeReviewLogic()
    logic.connect(server.url)
    image_id = logic.load_next_case("first")
    assert image_id == "us_000" and logic.planar and logic.volume.GetImageData().GetDimensions()[2] == 1
    session = logic.run({"score_thresh": 0.0, "max_boxes": 3})
    assert session.nodes and session.positive_class == "malignant"
    assert session.in_pixels and session.headers()[3:6] == ["p(mal)", "short px", "long px"]
    assert {row[2] for row in session.table()} <= {"malignant", "benign"}
    logic.show_boxes()
    assert set(logic.rois) == {n.id for n in session.nodes}
    first = session.nodes[0]
    relabelled = "benign" if first.cls == "metastatic" else "metastatic"  # the label's word for malignant
    session.set_class(first.id, relabelled)
    added = logic.add_box_at([-128.0, -128.0, 0.0])  # RAS of pixel (128, 128): the image's middle
    assert logic.session.node(added).size == pytest.approx([25.6, 25.6, 1.0]), "a tenth of the image, one slice thick"

    answer = logic.submit("dr.us")
    assert answer["review"]["added"] == 1 and answer["review"]["relabelled"] == 1, answer
    label = server.request("GET", f"/datastore/label?label={image_id}&tag=final")[1]
    assert next(n for n in label["nodes"] if n.get("origin") == "added")["center"] == [128.0, 128.0, 0.0]
    assert next(n for n in label["nodes"] if n.get("from_node") == first.id)["class"] == relabelled
