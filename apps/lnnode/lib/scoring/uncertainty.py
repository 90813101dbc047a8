"""``lymph_node_uncertainty``: how unsure the current models are about each unlabelled image.

Per image the pipeline runs once (classifier with its flip test-time augmentation) and the detector
once more on the left-right mirrored volume. Three numbers, each in [0, 1]:

* ``mean_entropy`` (weighted by detection score: a faint box counts little) and ``max_entropy`` over
  the detected nodes of the binary entropy (bits) of ``p_metastasis`` (of the detection score where
  there is no classifier);
* ``detection_disagreement``: score mass the two detector passes do not agree on (boxes of one pass
  with no box of the other within half a box size, plus the score differences of matched boxes),
  over the total score mass.

``score = (mean_entropy + max_entropy) / 2 + detection_disagreement`` (0 to 2), stored with its parts
and the model versions in the image's info under ``lymph_node_uncertainty``. An image whose score was
computed by the models now in service is not scored again (``force: true`` rescores everything), so
MONAI Label's automatic re-scoring after every training and every served case costs little.

While no unlabelled image scores above 0 (no detector weights yet, or models that find nothing: a cold
start), every image, labelled or not, also gets its appearance (:mod:`.appearance`, model-free, once per image)
under ``lymph_node_appearance``: the strategies serve typical cases of the kinds not read yet until the models
score the pool.

A 2D image is scored by the 2D pipeline (``planar_pipeline``), mirrored left-right as a volume is; an image whose
kind has no detector weights is left for later (``skipped``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod

from lnnode.geometry import ImageGeometry
from lnnode.io.image import is_planar, read_geometry
from lnnode.selection import binary_entropy
from lnnode.transforms import LoadVolumed

from ..infers.keys import EMBEDDINGS, IMAGE, IMAGE_GEOMETRY, NODES
from ..server.errors import ModelNotReady
from ..trainers.datalist import companion_ids
from .appearance import APPEARANCE_KEY, appearance_of, preprocessing_of

logger = logging.getLogger(__name__)

__all__ = [
    "NodeUncertaintyScoring",
    "case_embedding",
    "SCORE_KEY",
    "ScoringPlan",
    "detection_disagreement",
    "mirror_nodes",
]

SCORE_KEY = "lymph_node_uncertainty"


def mirror_nodes(nodes: list[dict[str, Any]], geometry: ImageGeometry, axis: int = 0) -> list[dict[str, Any]]:
    """Nodes found on a volume mirrored along index ``axis`` (same geometry), mapped back to the image."""
    out = []
    n = geometry.shape[axis]
    for node in nodes:
        idx = np.asarray(geometry.world_to_index(np.asarray(node["center"], dtype=float)), dtype=float)
        idx[axis] = (n - 1) - idx[axis]
        out.append({**node, "center": [float(c) for c in geometry.index_to_world(idx)]})
    return out


def detection_disagreement(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """Score mass two detections of one image disagree on, over their total (0: identical, 1: disjoint)."""
    total = sum(n["detection_score"] for n in a) + sum(n["detection_score"] for n in b)
    if total <= 0:
        return 0.0
    unmatched_b = list(range(len(b)))
    disagreement = 0.0
    for node in sorted(a, key=lambda x: -x["detection_score"]):
        best, best_d = None, np.inf
        for j in unmatched_b:
            d = float(np.linalg.norm(np.subtract(node["center"], b[j]["center"])))
            reach = 0.5 * max(max(node["size"]), max(b[j]["size"]))
            if d <= reach and d < best_d:
                best, best_d = j, d
        if best is None:
            disagreement += node["detection_score"]
        else:
            unmatched_b.remove(best)
            disagreement += abs(node["detection_score"] - b[best]["detection_score"])
    disagreement += sum(b[j]["detection_score"] for j in unmatched_b)
    return float(min(disagreement / total, 1.0))


def case_embedding(embeddings: np.ndarray | None, probs: list[float], weights: np.ndarray) -> dict[str, Any]:
    """What the batch strategies compare cases by: ``embedding``, the classifier's node ``embeddings`` (N, D)
    averaged with the detection scores as weights, and ``p_doubt``, the probability of the node the classifier
    is least sure of. ``{}`` without classified nodes."""
    if embeddings is None or not len(embeddings) or len(embeddings) != len(probs):
        return {}
    w = weights if weights.sum() > 0 else np.ones(len(probs))
    mean = np.average(np.asarray(embeddings, dtype=float), axis=0, weights=w)
    doubt = float(np.asarray(probs)[int(np.argmax(binary_entropy(np.asarray(probs))))])
    return {"embedding": [round(float(v), 3) for v in mean], "p_doubt": round(doubt, 4)}


@dataclass
class ScoringPlan:
    """What a scoring run has to do: ``todo`` (image id, 2D or not, the image's path or its case's sequence
    paths), ``skipped`` (up to date, or no model of its kind yet), ``failed`` (why), the versions of the models
    in service per kind (True: 2D) and the kinds with a detector (``ready``; none: ``reason`` says so)."""

    versions: dict[bool, dict[str, str | None]]
    ready: set[bool]
    todo: list[tuple[str, bool, str | list[str]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    suffixes: list[str] = field(default_factory=list)
    reason: str | None = None


class NodeUncertaintyScoring(ScoringMethod):
    """Scores every image without a ``final`` label (see the module doc). Request: ``force``, ``device``,
    ``label_tag`` (the tag that counts as labelled), ``limit`` (score at most this many images)."""

    def __init__(self, pipeline: Any, planar_pipeline: Any = None, modalities: dict[bool, str] | None = None):
        super().__init__("Model uncertainty per unlabelled image (node entropy + detection disagreement under TTA)")
        self.pipeline = pipeline  # volumes (None: the app serves 2D models only)
        self.pipelines = {kind: p for kind, p in ((False, pipeline), (True, planar_pipeline)) if p is not None}
        self.modalities = {False: "ct", True: "us", **(modalities or {})}  # per kind (planar?): the appearance's

    @staticmethod
    def _versions(pipeline: Any) -> dict[str, str | None]:
        from ..infers.detection import model_version

        versions: dict[str, str | None] = {}
        for stage in (pipeline.detection, pipeline.classification):
            if stage is None:
                continue
            try:
                versions[stage.name] = model_version(stage.checkpoint(), stage.name)
            except ModelNotReady:
                versions[stage.name] = None
        return versions

    def score_image(
        self, image: str | list[str], image_id: str, device: str = "cpu", pipeline: Any = None
    ) -> dict[str, Any]:
        """The uncertainty of one image (``image``: path, or the case's sequence paths), by ``pipeline`` (default:
        the volume pipeline)."""
        pipeline = pipeline or self.pipeline
        begin = time.perf_counter()
        request = {"image": image, "image_id": image_id, "device": device}
        with pipeline.detection.pinned():  # the same detector for both passes
            nodes = pipeline.result_for(request)["nodes"]
            loaded = LoadVolumed(keys=IMAGE, allow_2d=pipeline.planar)({IMAGE: image})
            geometry: ImageGeometry = loaded[IMAGE_GEOMETRY]
            mirrored = np.ascontiguousarray(np.flip(np.asarray(loaded[IMAGE]), axis=1))  # index axis 0
            detected = pipeline.detection.result_for(request, mirrored, geometry)
        embeddings = self._embeddings(pipeline, request, nodes, loaded[IMAGE], geometry)
        again = mirror_nodes(detected["nodes"], geometry, axis=0)
        probs = [n["p_metastasis"] if "p_metastasis" in n else n["detection_score"] for n in nodes]
        entropy = binary_entropy(np.asarray(probs)) if probs else np.zeros(0)
        weights = np.asarray([n["detection_score"] for n in nodes], dtype=float)
        mean_h = float(np.sum(weights * entropy) / weights.sum()) if entropy.size and weights.sum() > 0 else 0.0
        max_h = float(entropy.max()) if entropy.size else 0.0
        disagreement = detection_disagreement(nodes, again)
        return {
            "score": round(0.5 * (mean_h + max_h) + disagreement, 4),
            "mean_entropy": round(mean_h, 4),
            "max_entropy": round(max_h, 4),
            "detection_disagreement": round(disagreement, 4),
            "n_nodes": len(nodes),
            **case_embedding(embeddings, probs, weights),
            "seconds": round(time.perf_counter() - begin, 2),
        }

    @staticmethod
    def _embeddings(pipeline: Any, request: dict[str, Any], nodes: list[dict], volume, geometry) -> np.ndarray | None:
        """The classifier's embedding of each node (N, D); None without nodes or classifier weights."""
        if not nodes or pipeline.classification is None or "p_metastasis" not in nodes[0]:
            return None
        query = {**request, NODES: [{"center": n["center"], "size": n["size"]} for n in nodes], "embeddings": True}
        return pipeline.classification.run_for(query, volume, geometry).get(EMBEDDINGS)

    def plan(self, request, datastore: Datastore) -> ScoringPlan:
        """What a run for ``request`` has to score (see :class:`ScoringPlan`); reads no image beyond its header."""
        force = str(request.get("force", False)).lower() in ("true", "1", "yes")
        if hasattr(datastore, "reload"):
            datastore.reload()  # scores and labels other processes wrote
        tag = request.get("label_tag") or DefaultLabelTag.FINAL.value
        limit = int(request.get("limit") or 0)
        versions = {kind: self._versions(p) for kind, p in self.pipelines.items()}
        ready = {kind for kind, p in self.pipelines.items() if versions[kind].get(p.detection.name) is not None}
        plan = ScoringPlan(versions=versions, ready=ready)
        if not ready:
            plan.reason = "no detector weights: nothing to score with"
            return plan
        if self.pipeline is not None and False in ready:
            plan.suffixes = self.pipeline.channel_suffixes()
        suffixes = plan.suffixes
        for image_id in sorted(datastore.get_unlabeled_images(tag)):
            if image_id.endswith(tuple(suffixes)) and suffixes:
                continue  # another sequence of a case, not a case
            previous = datastore.get_image_info(image_id).get(SCORE_KEY) or {}
            if not force and any(previous.get("models") == versions[k] for k in ready):
                plan.skipped.append(image_id)  # scored by the models in service: its kind need not be read
                continue
            try:
                kind = is_planar(read_geometry(datastore.get_image_uri(image_id), allow_2d=True))
            except Exception as e:  # noqa: BLE001 - an unreadable image is named, the others go on
                plan.failed[image_id] = str(e)
                continue
            if kind not in ready:
                plan.skipped.append(image_id)  # no model of its kind yet
                continue
            if limit and len(plan.todo) >= limit:
                break
            ids = [image_id] if kind else [image_id, *companion_ids(image_id, suffixes)]
            paths = [datastore.get_image_uri(i) for i in ids]
            if not all(paths):
                logger.warning(f"{image_id}: not scored: a sequence {suffixes} is missing")
                plan.failed[image_id] = f"a sequence {suffixes} is missing"
                continue
            plan.todo.append((image_id, kind, paths if len(paths) > 1 else paths[0]))
        return plan

    def score_case(
        self, image_id: str, planar: bool, image: str | list[str], device: str, models: dict[str, str | None]
    ) -> dict[str, Any]:
        """What is stored under ``SCORE_KEY`` for one image of a plan: its :meth:`score_image` by the pipeline of
        its kind, the versions of the ``models`` that computed it and when. What a worker of a pool calls."""
        info = self.score_image(image, image_id, device, self.pipelines[planar])
        info.update(models=models, ts=int(time.time()))
        return info

    def __call__(self, request, datastore: Datastore):
        plan = self.plan(request, datastore)
        if plan.reason is not None:
            described = self._cold_start_appearances(datastore, request, plan.suffixes)
            return {"scored": [], "skipped": [], "failed": {}, "reason": plan.reason, "described": described}
        every = {name: v for kind in plan.versions for name, v in plan.versions[kind].items()}
        scored, failed = [], dict(plan.failed)
        for image_id, kind, image in plan.todo:
            device = request.get("device") or self.pipelines[kind].detection._config.get("device") or "cpu"
            try:
                info = self.score_case(image_id, kind, image, device, plan.versions[kind])
            except Exception as e:  # one bad image must not stop the others' scores
                logger.warning(f"{image_id}: not scored: {e}")
                failed[image_id] = str(e)
                continue
            datastore.update_image_info(image_id, {SCORE_KEY: info})
            scored.append(image_id)
        described = self._cold_start_appearances(datastore, request, plan.suffixes)
        logger.info(f"uncertainty: scored {len(scored)}, up to date {len(plan.skipped)}, failed {len(failed)}")
        return {"scored": scored, "skipped": plan.skipped, "failed": failed, "models": every, "described": described}

    def _cold_start_appearances(self, datastore: Datastore, request, suffixes: list[str]) -> list[str]:
        """The cases described (see :meth:`_describe`) while no unlabelled image has a score above 0: no model
        yet, or models that find nothing, the strategies' cold start (the same condition as theirs)."""
        tag = request.get("label_tag") or DefaultLabelTag.FINAL.value
        for image_id in datastore.get_unlabeled_images(tag):
            score = (datastore.get_image_info(image_id).get(SCORE_KEY) or {}).get("score")
            if isinstance(score, int | float) and score > 0:
                return []
        return self._describe(datastore, suffixes)

    def _describe(self, datastore: Datastore, suffixes: list[str], batch: int = 64) -> list[str]:
        """Store the appearance of every case (labelled or not; its first sequence) that lacks a current one;
        written in batches (one datastore write per ``batch`` images, not per image)."""
        current = [preprocessing_of(m) for m in self.modalities.values()]  # another --conf modality: made again
        described: list[str] = []
        pending: dict[str, dict[str, Any]] = {}
        for image_id in sorted(datastore.list_images()):
            if suffixes and image_id.endswith(tuple(suffixes)):
                continue
            stored = datastore.get_image_info(image_id).get(APPEARANCE_KEY)
            if isinstance(stored, dict) and stored.get("preprocessing") in current:
                continue
            try:
                path = datastore.get_image_uri(image_id)
                modality = self.modalities[is_planar(read_geometry(path, allow_2d=True))]
                pending[image_id] = {APPEARANCE_KEY: appearance_of(path, modality)}
                described.append(image_id)
            except Exception as e:  # noqa: BLE001 - without an appearance a case is still served, in id order
                logger.warning(f"{image_id}: no appearance: {e}")
                if stored is not None:
                    pending[image_id] = {APPEARANCE_KEY: None}  # an outdated one must not be compared
            if len(pending) >= batch:
                _update_infos(datastore, pending)
                pending = {}
        _update_infos(datastore, pending)
        return described


def _update_infos(datastore: Datastore, infos: dict[str, dict[str, Any]]) -> None:
    if not infos:
        return
    if hasattr(datastore, "update_image_infos"):
        datastore.update_image_infos(infos)
    else:
        for image_id, info in infos.items():
            datastore.update_image_info(image_id, info)
