"""Infer tasks whose network is rebuilt from their checkpoint (weights + metadata).

They are listed in ``/info/`` before any model exists; asked to infer without usable weights they
answer 503 with what to do, and a bad image gets a 4xx naming the problem (the server keeps going).
A newly published checkpoint is picked up on the next request (the file's mtime is checked); within one
request the checkpoint is resolved once and every step uses that one (:meth:`CheckpointInferTask.pinned`),
so a model published mid-request cannot mix old preprocessing with new weights.

A task serves volumes or, with ``planar``, 2D images (one-slice volumes); an image of the other kind is a 422
that names the model to send it to (:class:`CheckImageKindd`), and so is a checkpoint of the other kind.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from torch import nn

from lnnode.contracts import ContractError, validate_result
from lnnode.geometry import ImageGeometry
from lnnode.io.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from lnnode.io.image import ImageError, is_planar

from ..server.errors import ModelNotReady, Unprocessable
from .keys import IMAGE, IMAGE_GEOMETRY, RESULT, SKIP_WRITER

logger = logging.getLogger(__name__)

__all__ = ["CheckpointInferTask", "CheckImageKindd", "counterpart", "image_kind_error"]

PLANAR_SUFFIX = "_2d"


def counterpart(name: str) -> str:
    """The model of the other kind: ``lymph_node_detection`` <-> ``lymph_node_detection_2d``."""
    return name[: -len(PLANAR_SUFFIX)] if name.endswith(PLANAR_SUFFIX) else name + PLANAR_SUFFIX


def image_kind_error(name: str, planar: bool, geometry: ImageGeometry) -> Unprocessable | None:
    """The 422 for an image the model ``name`` (2D with ``planar``) does not read, else None."""
    if is_planar(geometry) == planar:
        return None
    kind = "a 2D image (one slice)" if is_planar(geometry) else f"a volume of {geometry.shape[2]} slices"
    reads = "2D images" if planar else "volumes"
    return Unprocessable(f"the image is {kind}; {name} reads {reads}: send it to {counterpart(name)}")


class CheckImageKindd(MapTransform):
    """Refuse (422) an image under ``key`` that the model does not read: a 2D image sent to a volume model or
    a volume to a 2D model, naming the model to use."""

    def __init__(self, name: str, planar: bool, key: str = IMAGE):
        super().__init__(keys=[key])
        self.name, self.planar, self.key = name, planar, key

    def __call__(self, data):
        error = image_kind_error(self.name, self.planar, data[f"{self.key}_geometry"])
        if error is not None:
            raise error
        return data


class CheckpointInferTask(BasicInferTask):
    """BasicInferTask with lnnode checkpoints; subclasses build their network from the checkpoint."""

    checkpoint_task: str = ""

    def __init__(
        self,
        name: str,
        paths: Sequence[str],
        type: InferType,
        description: str,
        config: dict[str, Any] | None = None,
        labels: Sequence[str] = ("lymph_node",),
        planar: bool = False,
    ):
        # several paths: the last existing one is served (trained model over the shipped demo weights)
        super().__init__(
            path=list(paths),
            network=None,
            type=type,
            labels=list(labels),
            dimension=2 if planar else 3,
            description=description,
            config=config,
            load_strict=True,
        )
        self.name = name
        self.planar = planar
        self._checkpoint: tuple[str, int, Checkpoint] | None = None
        # the checkpoint of the request in progress, per thread (concurrent requests each pin their own)
        self._pinned: contextvars.ContextVar[Checkpoint | None] = contextvars.ContextVar(f"{name}_ckpt", default=None)

    # -- checkpoint ---------------------------------------------------------------------------------
    def is_valid(self) -> bool:
        return True  # listed before it is trained; infer explains what is missing

    def checkpoint(self) -> Checkpoint:
        """The request's checkpoint while one is pinned, else the served one; ModelNotReady when there is none."""
        return self._pinned.get() or self._served_checkpoint()

    @contextlib.contextmanager
    def pinned(self) -> Iterator[Checkpoint]:
        """Resolve the served checkpoint once and use it for everything inside (nested: the outer one)."""
        current = self._pinned.get()
        if current is not None:
            yield current
            return
        token = self._pinned.set(self._served_checkpoint())
        try:
            yield self._pinned.get()
        finally:
            self._pinned.reset(token)

    def _served_checkpoint(self) -> Checkpoint:
        """The served checkpoint (cached until its file changes)."""
        path = self.get_path()
        if path is None:
            raise ModelNotReady(
                f"model {self.name!r} has no weights yet: train it (POST /train/{self.name}) or put a "
                f"checkpoint at {self.path[-1]}"
            )
        mtime = os.stat(path).st_mtime_ns
        if self._checkpoint and self._checkpoint[:2] == (path, mtime):
            return self._checkpoint[2]
        try:
            checkpoint = load_checkpoint(path, task=self.checkpoint_task)
        except CheckpointError as e:
            raise ModelNotReady(f"model {self.name!r} is unusable: {e}") from None
        dims = self.spatial_dims(checkpoint)
        if dims != (2 if self.planar else 3):
            raise ModelNotReady(
                f"model {self.name!r}: {path} holds a {dims}D model; serve it as {counterpart(self.name)}"
            )
        self._checkpoint = (path, mtime, checkpoint)
        self._networks.clear()
        return checkpoint

    @staticmethod
    @abstractmethod
    def spatial_dims(checkpoint: Checkpoint) -> int:
        """2 or 3: what the checkpoint's network reads."""

    @abstractmethod
    def build_network(self, checkpoint: Checkpoint) -> nn.Module:
        """The (untrained) network described by the checkpoint's metadata."""

    def _get_network(self, device: str, data: Any) -> nn.Module:
        checkpoint = self.checkpoint()
        cached = self._networks.get(device)
        if cached and cached[1] is checkpoint:
            return cached[0]
        network = self.build_network(checkpoint)
        try:
            network.load_state_dict(checkpoint.state_dict, strict=True)
        except RuntimeError as e:
            raise ModelNotReady(f"model {self.name!r}: weights do not fit its network ({str(e)[:300]})") from None
        network.to(torch.device(device)).eval()
        if torch.device(device).type == "cpu" and self.spatial_dims(checkpoint) == 3:
            # oneDNN's 3D convolutions run faster channels-last (2 CPU threads: the classifier's 48^3 crops 35 %,
            # the detector's whole-CT window 15-20 %; same outputs to float rounding)
            network.to(memory_format=torch.channels_last_3d)
        self._networks[device] = (network, checkpoint)
        return network

    def info(self) -> dict[str, Any]:
        info = super().info()
        try:
            checkpoint = self.checkpoint()
            info["weights"] = {"path": checkpoint.path, "training": checkpoint.meta.get("training", {})}
            # a multi-sequence model reads <id><suffix> images too: a client loads them with the case
            info["channel_suffixes"] = list(checkpoint.meta.get("preprocessing", {}).get("channel_suffixes", []))
        except ModelNotReady as e:
            info["weights"] = {"path": None, "status": e.detail}
        return info

    # -- request ------------------------------------------------------------------------------------
    def __call__(self, request, callbacks=None):
        with self.pinned():  # fails fast (503), before the image is read, when there are no weights
            try:
                result_file, result = super().__call__(request, callbacks)
            except ImageError as e:
                raise Unprocessable(f"image {request.get(IMAGE)!r} cannot be used: {e.reason}") from None
        if request.get(SKIP_WRITER):  # a stage: its data, the result under RESULT
            return result_file, result
        return result_file, self._finish_result(result)

    def result_for(
        self, request: dict[str, Any], volume: np.ndarray | None = None, geometry: ImageGeometry | None = None
    ) -> dict[str, Any]:
        """The result document for ``request`` without writing a markups file: how the pipeline and the
        scoring method call a stage. ``volume`` (C, i, j, k) with its ``geometry``: an image already
        loaded, used as it is instead of ``request["image"]``."""
        return self.run_for(request, volume, geometry)[RESULT]

    def run_for(
        self, request: dict[str, Any], volume: np.ndarray | None = None, geometry: ImageGeometry | None = None
    ) -> dict[str, Any]:
        """As :meth:`result_for`, but every data key the run left (the result under ``RESULT``)."""
        stage = {**request, SKIP_WRITER: True}
        if volume is not None:
            if geometry is None:
                raise ValueError("a loaded volume needs its geometry")
            stage.update({IMAGE: volume, IMAGE_GEOMETRY: geometry})
        _, data = self(stage)
        return data

    @staticmethod
    def _finish_result(result: dict) -> dict:
        """Keep the result contract: drop MONAI Label's extra keys, keep numeric latencies, validate."""
        for key in ("label_names", "centroids"):
            result.pop(key, None)
        latencies = result.pop("latencies", {}) or {}
        result["latencies"] = {k: float(v) for k, v in latencies.items() if isinstance(v, (int, float))}
        try:
            return validate_result(result)
        except ContractError as e:  # a bug of ours, never the client's: say so
            raise RuntimeError(f"lnnode produced an invalid result: {e}") from e
