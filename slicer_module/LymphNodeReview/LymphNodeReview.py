"""Lymph Node Review: review lnnode's node boxes and metastasis probabilities, correct them, send them back.

Module, Widget, Logic and Test in the Slicer way. The Widget only wires the panel
(``Resources/UI/LymphNodeReview.ui``) to the Logic; the Logic keeps the scene (volumes, ROI boxes)
and the review in step; everything that needs neither Slicer nor Qt (server client, review state,
labels, LPS/RAS) is in ``LymphNodeReviewLib`` and tested outside Slicer.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import qt
import slicer
import vtk
from LymphNodeReviewLib import LymphNodeServer, ReviewSession, ServerError
from LymphNodeReviewLib.client import DEFAULT_STRATEGY, describe_server, models_for
from LymphNodeReviewLib.review import TABLE_COLUMNS, TABLE_HEADERS, box_lps_to_ras, box_ras_to_lps
from LymphNodeReviewLib.saliency import write_saliency_maps
from LymphNodeReviewLib.scene import read_review, review_rois, show_review
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

REVIEW_PARAMETER = "review"  # the review (JSON) in the module's parameter node: saved with the scene
SETTINGS_URL = "LymphNodeReview/serverUrl"


class LymphNodeReview(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Lymph Node Review"
        self.parent.categories = ["lnnode"]
        self.parent.contributors = ["lnnode developers"]
        self.parent.helpText = (
            "Runs the lnnode server's lymph-node pipeline on a case, shows each node as a box coloured by "
            "its metastasis probability, lets you accept, reject, relabel, move, resize and add nodes, and "
            "sends your review back to the server as training data. Shortcuts: A accept, R reject, "
            "M metastatic, B benign, N next case, Ctrl+Z undo."
        )
        self.parent.acknowledgementText = "Built on MONAI Label and 3D Slicer."


# -- logic (no widgets) -------------------------------------------------------------------------------------
class LymphNodeReviewLogic(ScriptedLoadableModuleLogic):
    """Server calls, the scene's volume and ROI boxes, and the review state, kept in step."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.server: LymphNodeServer | None = None
        self.session: ReviewSession | None = None
        self.image_id: str | None = None
        self.volume = None
        self.planar = False  # a 2D case (one slice): the server's 2D models review it
        self.sequences: list = []
        self.rois: dict = {}
        self.saliency_paths: dict = {}
        self.saliency_volume = None

    def reset(self) -> None:
        """Forget the current case's review, boxes and saliency maps (a new case is coming)."""
        for roi in review_rois(slicer.mrmlScene).values():
            slicer.mrmlScene.RemoveNode(roi)
        if self.saliency_volume is not None:
            slicer.mrmlScene.RemoveNode(self.saliency_volume)
        self.session, self.rois, self.saliency_paths, self.saliency_volume = None, {}, {}, None
        self.getParameterNode().SetParameter(REVIEW_PARAMETER, "")

    # server
    def connect(self, url: str) -> dict:
        self.server = LymphNodeServer(url)
        return self.server.info()

    def _require_server(self) -> LymphNodeServer:
        if self.server is None:
            raise ServerError("connect to an lnnode server first")
        return self.server

    # cases
    def load_next_case(self, strategy: str = DEFAULT_STRATEGY) -> str | None:
        """Ask the strategy for a case and load it (all its sequences); None when none is left."""
        fetched = self.fetch_next_case(strategy)
        return self.load_fetched(*fetched) if fetched else None

    def fetch_next_case(self, strategy: str = DEFAULT_STRATEGY) -> tuple[str, list[str]] | None:
        """The next case's id and local files (the image, then its other sequences ``<id><suffix>``).
        Network only, no scene: safe to run off the GUI thread."""
        server = self._require_server()
        case = server.next_case(strategy)
        if not case:
            return None
        folder = tempfile.mkdtemp(prefix="lnnode-")
        path = case.get("path")
        if not (path and os.path.exists(path)):  # a remote server: download it
            path = server.download_image(case["id"], folder)
        others = [server.download_image(case["id"] + suffix, folder) for suffix in server.channel_suffixes()]
        return case["id"], [path, *others]

    def load_fetched(self, image_id: str, paths: list[str]) -> str:
        self.reset()
        self.volume = slicer.util.loadVolume(paths[0])
        self.sequences = [slicer.util.loadVolume(p) for p in paths[1:]]
        self.planar = self.is_planar(self.volume)
        self.image_id = image_id
        return image_id

    @staticmethod
    def is_planar(volume_node) -> bool:
        """A 2D image (ultrasound, a key slice): a volume of one slice."""
        return volume_node.GetImageData().GetDimensions()[2] == 1

    def save_volume(self, volume_node, image_id: str) -> tuple[str, str]:
        """Write a volume loaded in Slicer to a temp file for upload (scene access: GUI thread)."""
        image_id = re.sub(r"[^A-Za-z0-9._+-]", "_", image_id).lstrip("._-") or "slicer_volume"  # a valid id
        path = os.path.join(tempfile.mkdtemp(prefix="lnnode-"), f"{image_id}.nrrd")
        slicer.util.saveNode(volume_node, path)
        return image_id, path

    def upload(self, image_id: str, path: str) -> str:
        """Add the saved volume to the server's datastore (network only: any thread)."""
        return self._require_server().upload_image(path, image_id)

    def use_volume(self, volume_node, image_id: str) -> str:
        """Review a volume already in Slicer: it is uploaded to the server's datastore under ``image_id``."""
        image_id, path = self.save_volume(volume_node, image_id)
        self.reset()
        self.image_id = self.upload(image_id, path)
        self.volume = volume_node
        self.planar = self.is_planar(volume_node)
        return self.image_id

    def run(self, params: dict | None = None) -> ReviewSession:
        """Run the pipeline on the current case; returns the new review (boxes are made by show_boxes)."""
        if not self.image_id:
            raise ServerError("load a case first")
        result = self._require_server().run_pipeline(self.image_id, params or {}, planar=self.planar)
        self.session = ReviewSession(result)
        self.saliency_paths = write_saliency_maps(result, tempfile.mkdtemp(prefix="lnnode-saliency-"))
        return self.session

    def show_saliency(self, node_id: str, opacity: float = 0.4) -> bool:
        """Overlay a node's saliency map (when the server returned one) in the slice views."""
        path = self.saliency_paths.get(node_id)
        if not path:
            return False
        if self.saliency_volume is not None:
            slicer.mrmlScene.RemoveNode(self.saliency_volume)
        self.saliency_volume = slicer.util.loadVolume(path, {"show": False})
        self.saliency_volume.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileHotToColdRainbow.txt")
        slicer.util.setSliceViewerLayers(foreground=self.saliency_volume, foregroundOpacity=opacity)
        return True

    # scene (LymphNodeReviewLib.scene does the work, on slicer.mrmlScene)
    def show_boxes(self) -> None:
        """One axis-aligned ROI per node (RAS), coloured by probability; rejected nodes hidden."""
        self.rois = show_review(slicer.mrmlScene, self.session)
        self.keep_review_in_scene()

    def sync_from_scene(self) -> list:
        """Boxes moved, resized, deleted or placed ("LN new...") in the scene become review edits."""
        changed = read_review(slicer.mrmlScene, self.session)
        self.rois = review_rois(slicer.mrmlScene)
        self.keep_review_in_scene()
        return changed

    def add_box_at(self, center_ras, size_mm: float = 10.0, cls: str = "benign") -> str:
        """A node the model missed, a ``size_mm`` cube at ``center_ras``; on a 2D image a square one slice thick (along
        the world axis of the slice normal) and at least a tenth of the image across."""
        # boxes moved in the views but not read yet would be redrawn where they were
        self.sync_from_scene()
        size = [size_mm] * 3
        if self.planar and self.volume is not None:
            ijk_to_ras = vtk.vtkMatrix4x4()
            self.volume.GetIJKToRASMatrix(ijk_to_ras)
            normal = int(np.argmax([abs(ijk_to_ras.GetElement(r, 2)) for r in range(3)]))  # the world axis of k
            bounds = [0.0] * 6
            self.volume.GetRASBounds(bounds)
            sides = [bounds[2 * a + 1] - bounds[2 * a] for a in range(3) if a != normal]
            size = [max(size_mm, 0.1 * min(sides))] * 3
            size[normal] = self.volume.GetSpacing()[2]
        center, size = box_ras_to_lps(center_ras, size)
        node_id = self.session.add(center, size, cls)
        self.show_boxes()
        return node_id

    def undo(self) -> bool:
        """Undo the last change, a box moved in the views included."""
        self.sync_from_scene()
        undone = self.session.undo()
        self.show_boxes()
        return undone

    def jump_to(self, node_id: str) -> None:
        center, _ = box_lps_to_ras(self.session.node(node_id).center, self.session.node(node_id).size)
        slicer.modules.markups.logic().JumpSlicesToLocation(*center, True)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActivePlaceNodeID(self.rois[node_id].GetID())

    def keep_review_in_scene(self) -> None:
        if self.session is not None:
            self.getParameterNode().SetParameter(REVIEW_PARAMETER, self.session.to_json())

    def restore_review_from_scene(self) -> ReviewSession | None:
        text = self.getParameterNode().GetParameter(REVIEW_PARAMETER)
        self.session = ReviewSession.from_json(text) if text else None
        return self.session

    # submit
    def prepare_label(self, reviewer: str) -> dict:
        """The scene's edits into the review, the review into the scene's parameter node, and the label
        (scene access: GUI thread). The review stays there until a case is loaded, so nothing is lost."""
        self.sync_from_scene()
        return self.session.to_label(reviewer=reviewer)

    def send_label(self, label: dict, train_after: bool = False) -> dict:
        """Submit (network only: any thread); optionally start training both models."""
        answer = self._require_server().submit_label(self.image_id, label)
        if train_after:
            for model in models_for(self.planar)[1:]:
                answer.setdefault("training", {})[model] = self.server.start_training(model, {})
        return answer

    def submit(self, reviewer: str, train_after: bool = False) -> dict:
        return self.send_label(self.prepare_label(reviewer), train_after)


# -- widget -------------------------------------------------------------------------------------------------
class LymphNodeReviewWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: LymphNodeReviewLogic | None = None
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._job: dict | None = None
        self._shortcuts: list = []

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/LymphNodeReview.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = LymphNodeReviewLogic()

        self.ui.serverUrlEdit.text = qt.QSettings().value(SETTINGS_URL, "http://127.0.0.1:8000")
        self.ui.nodeTable.setColumnCount(len(TABLE_COLUMNS))
        self.ui.nodeTable.setHorizontalHeaderLabels(list(TABLE_HEADERS))
        self.ui.connectButton.connect("clicked()", self.onConnect)
        self.ui.nextCaseButton.connect("clicked()", self.onNextCase)
        self.ui.useVolumeButton.connect("clicked()", self.onUseVolume)
        self.ui.runButton.connect("clicked()", self.onRun)
        self.ui.acceptButton.connect("clicked()", lambda: self._edit("accept"))
        self.ui.rejectButton.connect("clicked()", lambda: self._edit("reject"))
        self.ui.metastaticButton.connect("clicked()", lambda: self._edit("metastatic"))
        self.ui.benignButton.connect("clicked()", lambda: self._edit("benign"))
        self.ui.addButton.connect("clicked()", self.onAdd)
        self.ui.undoButton.connect("clicked()", self.onUndo)
        self.ui.submitButton.connect("clicked()", self.onSubmit)
        self.ui.nodeTable.connect("cellClicked(int,int)", self.onRowClicked)
        self._timer.connect("timeout()", self._poll)
        for key, slot in (("A", lambda: self._edit("accept")), ("R", lambda: self._edit("reject")),
                          ("M", lambda: self._edit("metastatic")), ("B", lambda: self._edit("benign")),
                          ("N", self.onNextCase), ("Ctrl+Z", self.onUndo)):  # fmt: skip
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", slot)
            shortcut.setEnabled(False)  # on while this module is shown (enter/exit): R must not reject elsewhere
            self._shortcuts.append(shortcut)
        self.ui.progressBar.hide()

    def enter(self):
        for shortcut in self._shortcuts:
            shortcut.setEnabled(True)

    def exit(self):
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)

    def cleanup(self):
        self.exit()
        self._timer.stop()
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []
        self.removeObservers()

    # background work: server calls run in a thread, the GUI polls (it never freezes)
    def _start(self, what: str, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        if self._job is not None:
            self._say("busy: wait for the current request to finish")
            return
        self._job = {"done": done, "result": None, "error": None}

        def target(job=self._job):
            try:
                job["result"] = work()
            except Exception as e:  # shown to the reader in words
                job["error"] = e

        self._job["thread"] = threading.Thread(target=target, daemon=True)
        self._job["thread"].start()
        self.ui.progressBar.show()
        self._say(what + "...")
        self._timer.start()

    def _poll(self) -> None:
        job = self._job
        if job is None or job["thread"].is_alive():
            return
        self._timer.stop()
        self.ui.progressBar.hide()
        self._job = None
        if job["error"] is not None:
            self._say(f"error: {job['error']}")
            return
        job["done"](job["result"])

    def _say(self, text: str) -> None:
        self.ui.statusLabel.text = text

    # actions
    def onConnect(self):
        url = self.ui.serverUrlEdit.text.strip()
        qt.QSettings().setValue(SETTINGS_URL, url)

        def done(info):
            self._say(describe_server(info))
            self.ui.strategyCombo.clear()
            for name in sorted(info.get("strategies", {})):
                self.ui.strategyCombo.addItem(name)
            self.ui.strategyCombo.currentText = DEFAULT_STRATEGY

        self._start("connecting", lambda: self.logic.connect(url), done)

    def onNextCase(self):
        strategy = self.ui.strategyCombo.currentText or DEFAULT_STRATEGY
        if self.logic.server is None:
            self._say("connect first")
            return
        # choosing and downloading run in the background; loading the volumes in the GUI thread
        self._start("fetching the next case", lambda: self.logic.fetch_next_case(strategy), self._loadCase)

    def _loadCase(self, fetched):
        if not fetched:
            self._say("no unreviewed case left")
            return
        image_id = self.logic.load_fetched(*fetched)
        self._fillTable()
        extra = f" with {len(self.logic.sequences)} more sequence(s)" if self.logic.sequences else ""
        self._say(f"case {image_id} loaded{extra}: Run to see its nodes")

    def onUseVolume(self):
        volume = self.ui.volumeSelector.currentNode()
        if volume is None:
            self._say("select a volume")
            return
        image_id, path = self.logic.save_volume(volume, volume.GetName())  # GUI thread: scene access

        def done(uploaded):
            self.logic.reset()
            self.logic.image_id, self.logic.volume = uploaded, volume
            self._fillTable()
            self._say(f"uploaded as {uploaded}: Run to see its nodes")

        self._start("uploading", lambda: self.logic.upload(image_id, path), done)

    def onRun(self):
        params = {"saliency": bool(self.ui.saliencyCheck.checked)}
        self._start("running the pipeline", lambda: self.logic.run(params), lambda s: self._showReview())

    def _showReview(self):
        self.logic.show_boxes()
        self._fillTable()

    def _fillTable(self):
        session = self.logic.session
        cells = session.table() if session else []
        self.ui.nodeTable.setHorizontalHeaderLabels(session.headers() if session else list(TABLE_HEADERS))
        self.ui.metastaticButton.text = f"{(session.positive_class if session else 'metastatic').capitalize()} (M)"
        self.ui.nodeTable.setRowCount(len(cells))
        for r, row in enumerate(cells):
            for c, text in enumerate(row):
                self.ui.nodeTable.setItem(r, c, qt.QTableWidgetItem(text))
        self.ui.summaryLabel.text = session.summary_text() if session else ""

    def _selected(self) -> str | None:
        row = self.ui.nodeTable.currentRow()
        if row < 0 or self.logic.session is None or row >= len(self.logic.session.nodes):
            return None
        return self.logic.session.nodes[row].id

    def onRowClicked(self, row, column):
        node_id = self._selected()
        if node_id:
            self.logic.jump_to(node_id)
            if self.ui.saliencyCheck.checked:
                self.logic.show_saliency(node_id)

    def _edit(self, action: str):
        node_id = self._selected()
        if node_id is None:
            return
        self.logic.sync_from_scene()
        session = self.logic.session
        if action == "accept":
            session.accept(node_id)
        elif action == "reject":
            session.reject(node_id)
        else:
            session.set_class(node_id, action)
        self.logic.show_boxes()
        self._fillTable()

    def onAdd(self):
        if self.logic.session is None:
            return
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        center = [0.0, 0.0, 0.0]
        crosshair.GetCursorPositionRAS(center)
        self.logic.add_box_at(center, cls="metastatic" if self.ui.addMetastaticCheck.checked else "benign")
        self._fillTable()

    def onUndo(self):
        if self.logic.session is not None and self.logic.undo():
            self._fillTable()

    def onSubmit(self):
        if self.logic.session is None:
            return
        try:
            label = self.logic.prepare_label(self.ui.reviewerEdit.text.strip())  # GUI thread: scene access
        except ValueError as e:
            self._say(f"not submitted: {e}")
            return
        train = bool(self.ui.trainAfterCheck.checked)

        def done(answer):
            r = answer.get("review", {})
            self._say(f"submitted: {r.get('corrections', 0)} corrections ({r.get('accepted', 0)} accepted, "
                      f"{r.get('rejected', 0)} rejected, {r.get('added', 0)} added)")  # fmt: skip

        self._start("submitting", lambda: self.logic.send_label(label, train), done)


# -- test (run inside Slicer: needs a running lnnode server, LNNODE_TEST_SERVER or 127.0.0.1:8000) -----------
class LymphNodeReviewTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_review_round_trip()

    def test_review_round_trip(self):
        """A synthetic oblique volume is uploaded, the pipeline runs, edits are made, the review is sent."""
        url = os.environ.get("LNNODE_TEST_SERVER", "http://127.0.0.1:8000")
        logic = LymphNodeReviewLogic()
        logic.connect(url)
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "lnnode_selftest")
        array = np.full((40, 96, 96), -100, dtype=np.int16)  # k, j, i: fat
        array[18:24, 40:48, 40:48] = 40  # a soft-tissue blob
        slicer.util.updateVolumeFromArray(volume, array)
        volume.SetSpacing(0.9, 0.8, 2.5)
        ijk_to_ras = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijk_to_ras)
        rotation = vtk.vtkTransform()
        rotation.RotateZ(15)
        rotation.RotateX(5)
        combined = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Multiply4x4(rotation.GetMatrix(), ijk_to_ras, combined)
        volume.SetIJKToRASMatrix(combined)
        logic.use_volume(volume, "lnnode_selftest")
        session = logic.run({"score_thresh": 0.01})
        logic.show_boxes()
        self.assertEqual(len(logic.rois), len(session.nodes))
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)  # the middle of an oblique volume's RAS bounds is its centre: inside it
        added = logic.add_box_at(
            [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
        )
        if session.nodes and session.nodes[0].id != added:
            session.reject(session.nodes[0].id)
        answer = logic.submit("slicer-selftest")
        self.assertIn("review", answer)
        self.assertEqual(answer["review"]["added"], 1)
        self.delayDisplay("Lymph Node Review self-test passed")
