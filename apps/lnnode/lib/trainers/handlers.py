"""Ignite pieces shared by lnnode's train tasks: a detection metric and the model publisher.

The publisher keeps the best checkpoint of a run (with its metadata) and publishes it to the infer
task's model path only when training completes, atomically; an interrupted or failed training
leaves the served model untouched. Train stats are rewritten (atomically) after every epoch.

One training of a model at a time: from its start to its end a run holds ``<model_dir>/<name>.train.lock``
(an flock, released by the kernel when the process dies; taken by the train task, :func:`training_lock`).
Several server replicas share one model dir, and each one starts the trainings it is asked for in a process
of its own; a second run of a model whose lock is held stops at its start (:class:`TrainingInProgress`)
before it reads or writes anything, so two runs never write one best checkpoint, one stats file or one
published model at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from ignite.engine import Engine, Events
from ignite.metrics import Metric

from lnnode.io.atomic import atomic_write_text
from lnnode.io.checkpoint import publish, save_checkpoint
from lnnode.metrics.detection import cpm, froc, match_volume

logger = logging.getLogger(__name__)

__all__ = [
    "DetectionCPM",
    "PublishBestModel",
    "TrainingInProgress",
    "train_lock_path",
    "training_in_progress",
    "training_lock",
]


class TrainingInProgress(RuntimeError):
    """Another training of the same model holds its lock (in this server, or in another replica)."""


def train_lock_path(model_path: str) -> str:
    """The lock a training of the model published at ``model_path`` holds while it runs: ``<name>.train.lock``."""
    return os.path.splitext(model_path)[0] + ".train.lock"


def _try_lock(model_path: str) -> FileLock | None:
    """The training lock of the model at ``model_path``, taken; None when another holder has it."""
    lock = FileLock(train_lock_path(model_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


@contextlib.contextmanager
def training_lock(model_path: str, name: str) -> Iterator[None]:
    """Hold the training lock of the model at ``model_path`` for the block; TrainingInProgress when another holds
    it (a run of this server, or of another replica)."""
    lock = _try_lock(model_path)
    if lock is None:
        raise TrainingInProgress(
            f"another training of {name} is running ({train_lock_path(model_path)} is held, maybe by another "
            "server replica): this run stopped before reading or writing anything; train again when it has finished"
        )
    try:
        yield
    finally:
        lock.release()


def training_in_progress(model_path: str) -> bool:
    """Whether a process (any replica's, on any host sharing the folder by a file system with flock) is training
    the model published at ``model_path`` now."""
    lock = _try_lock(model_path)
    if lock is None:
        return True
    lock.release()
    return False


class DetectionCPM(Metric):
    """CPM (mean sensitivity at 1/8 ... 8 FP per volume, IoU >= 0.1) over the evaluated volumes.

    Expects ``engine.state.output`` to be a list of ``{"pred": [nodes], "gt": [nodes]}``.
    """

    def __init__(self, output_transform: Callable = lambda x: x, iou_thresh: float = 0.1):
        self.iou_thresh = iou_thresh
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self._matches = []

    def update(self, output: list[dict[str, Any]]) -> None:
        for item in output:
            self._matches.append(match_volume(item["pred"], item["gt"], "iou", self.iou_thresh))

    def compute(self) -> float:
        if not self._matches or sum(m.n_gt for m in self._matches) == 0:
            return 0.0
        return cpm(froc(self._matches))[0]

    def operating_point(self, max_fp_per_volume: float = 1.0) -> dict[str, float] | None:
        """The highest-sensitivity point of the last evaluation with at most ``max_fp_per_volume``."""
        if not getattr(self, "_matches", None) or sum(m.n_gt for m in self._matches) == 0:
            return None
        curve = froc(self._matches)
        ok = np.flatnonzero(curve["fp_per_volume"] <= max_fp_per_volume)
        best = ok[np.argmax(curve["sensitivity"][ok])]
        threshold = float(curve["thresholds"][best]) if np.isfinite(curve["thresholds"][best]) else 1.0
        return {
            "score_threshold": threshold,
            "sensitivity": float(curve["sensitivity"][best]),
            "fp_per_volume": float(curve["fp_per_volume"][best]),
        }


class PublishBestModel:
    """Save the best checkpoint of a run; publish it when training completes; keep train stats.

    ``make_meta(context)`` returns the checkpoint metadata (spec, preprocessing, data summary).
    Without validation data the last epoch's model is the one published. ``served_metric()`` gives
    the model in service's metric on the same validation images (or None and why not); with
    ``gate`` the new model is published only when its best metric is not below that.
    """

    def __init__(
        self,
        context: Any,
        task: str,
        model_path: str,
        stats_path: str,
        make_meta: Callable[[Any], dict],
        metric_name: str,
        served_metric: Callable[[], tuple[float | None, str]] | None = None,
        gate: bool = True,
    ):
        self.context = context
        self.task = task
        self.model_path = model_path
        self.stats_path = stats_path
        self.make_meta = make_meta
        self.metric_name = metric_name
        self.served_metric = served_metric
        self.gate = gate
        self.comparison: dict[str, Any] | None = None
        # MONAI Label's output dir (<model_dir>/<request name>, "train_01" unless the request names one) is the
        # same for every model: the best checkpoint is named after the model, whose lock guards it
        stem = os.path.splitext(os.path.basename(model_path))[0]
        self.best_path = os.path.join(context.output_dir, f"{stem}.best.pt")
        self.best_metric = -np.inf
        self.best_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.status = "running"
        self.reason = ""

    def attach(self, trainer: Engine, evaluator: Engine | None) -> None:
        # stats from the start: a run killed in its first epoch still shows (as interrupted)
        trainer.add_event_handler(Events.STARTED, self._write_stats)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        trainer.add_event_handler(Events.COMPLETED, self._completed)
        trainer.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    def _state_dict(self) -> dict[str, torch.Tensor]:
        network = self.context.network
        return getattr(network, "module", network).state_dict()  # inside a DDP wrapper or not

    def _epoch_completed(self, trainer: Engine) -> None:
        evaluator = self.context.evaluator
        metric = None
        if evaluator is not None and evaluator.state.metrics:
            metric = float(evaluator.state.metrics.get(self.metric_name, np.nan))
        loss = trainer.state.metrics.get("train_loss")
        elapsed = round(time.time() - self.context.start_ts, 1)  # since the run started: time per round, per epoch
        self.history.append(
            {"epoch": trainer.state.epoch, "train_loss": loss, self.metric_name: metric, "elapsed_s": elapsed}
        )
        improved = metric is None or (np.isfinite(metric) and metric >= self.best_metric)
        if improved:
            self.best_metric = metric if metric is not None else -np.inf
            self.best_epoch = trainer.state.epoch
            meta = self.make_meta(self.context)
            meta.setdefault("training", {}).update(
                {"epoch": self.best_epoch, "metric": {self.metric_name: metric}, "run_id": self.context.run_id}
            )
            save_checkpoint(self.best_path, self.task, self._state_dict(), meta)
        self._write_stats(trainer)

    def _completed(self, trainer: Engine) -> None:
        if self.context.evaluator is None and trainer.state.iteration % max(trainer.state.epoch_length or 1, 1):
            # stopped inside an epoch (a time budget) without validation: the latest weights are the model
            meta = self.make_meta(self.context)
            meta.setdefault("training", {}).update({"epoch": trainer.state.epoch, "run_id": self.context.run_id})
            save_checkpoint(self.best_path, self.task, self._state_dict(), meta)
            self.best_epoch = trainer.state.epoch
        if os.path.exists(self.best_path) and not self._keeps_served_model():
            publish(self.best_path, self.model_path)
            self.status = "published"
            self.reason = f"best epoch {self.best_epoch} published to {self.model_path}"
            logger.info(f"+++ {self.reason}")
        elif self.status != "kept_previous":
            self.status = "not_published"
            self.reason = "no checkpoint was saved"
        self._write_stats(trainer)

    def _keeps_served_model(self) -> bool:
        """True when the model in service scores better on this run's validation set (nothing published)."""
        if self.served_metric is None or not np.isfinite(self.best_metric):
            return False
        served, why = self.served_metric()
        self.comparison = {"served_metric": served, "new_metric": float(self.best_metric), "note": why}
        if served is None or not self.gate or self.best_metric >= served:
            return False
        self.status = "kept_previous"
        self.reason = (
            f"the new model's {self.metric_name} {self.best_metric:.4f} is below the served model's "
            f"{served:.4f} on the same validation images: the served model stays (train with "
            f"publish=always to publish anyway)"
        )
        logger.info(f"+++ {self.reason}")
        return True

    def _failed(self, trainer: Engine, e: Exception) -> None:
        self.status = "failed"
        self.reason = f"{type(e).__name__}: {e} (the served model is unchanged)"
        self._write_stats(trainer)
        raise e

    def stats(self, trainer: Engine) -> dict[str, Any]:
        best = self.best_metric if np.isfinite(self.best_metric) else None
        return {
            "run_id": self.context.run_id,
            "pid": os.getpid(),  # the process that wrote the stats (the lock, not the pid, says whether it runs)
            "status": self.status,
            "reason": self.reason,
            "epoch": trainer.state.epoch,
            "total_epochs": trainer.state.max_epochs,
            "key_metric_name": self.metric_name,
            "best_metric": best,
            "best_metric_epoch": self.best_epoch,
            "history": self.history,
            "compared_with_served": self.comparison,
            "start_ts": int(self.context.start_ts),
            "elapsed_s": round(time.time() - self.context.start_ts, 1),
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _write_stats(self, trainer: Engine) -> None:
        atomic_write_text(self.stats_path, json.dumps(self.stats(trainer), indent=2, default=float))
