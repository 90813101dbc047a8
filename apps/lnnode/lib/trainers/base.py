"""What lnnode's train tasks share: fine-tuning the served model, the run's engines, the publisher.

A subclass gives its data, network, metric and checkpoint metadata (``_meta``); this class builds
MONAI's SupervisedTrainer/Evaluator around them, replaces MONAI Label's checkpoint savers by
:class:`PublishBestModel` (the best epoch is published atomically when training completes, the
previous model is kept), and honours an optional wall-clock budget (``max_train_minutes``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from abc import abstractmethod
from typing import Any

import numpy as np
import psutil
from ignite.engine import Events
from ignite.metrics import Average
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import StatsHandler, ValidationHandler
from monai.inferers import SimpleInferer
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from lnnode.io.checkpoint import Checkpoint, CheckpointError, load_checkpoint

from .datalist import labelled_datalist
from .handlers import PublishBestModel

logger = logging.getLogger(__name__)

__all__ = ["LnnodeTrainTask", "TRAIN_DEFAULTS"]

# request defaults of every lnnode train task (each adds its own: epochs, batch sizes, data loading)
TRAIN_DEFAULTS: dict[str, Any] = {
    "val_split": 0.2,
    "learning_rate": 1e-3,
    "label_tag": DefaultLabelTag.FINAL.value,
    "init": "current",  # "current": fine-tune the served model; "scratch": new weights
    "changed_weight": 2.0,  # a node the reader added, moved or relabelled counts this many times
    "publish": "if_not_worse",  # or "always": publish even below the served model's validation metric
    "multi_gpu": False,
    "tracking": "None",
}


def _hash_fraction(image_id: str) -> float:
    """A stable number in [0, 1) per image id (the same on every run and machine)."""
    return int(hashlib.sha1(image_id.encode()).hexdigest()[:12], 16) / 16**12


def _alive(pid: Any) -> bool:
    """A running process (a killed one may linger as a zombie until it is reaped: not alive)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class LnnodeTrainTask(BasicTrainTask):
    """BasicTrainTask that publishes lnnode checkpoints (``checkpoint_task``) ranked by ``metric_name``."""

    checkpoint_task: str = ""
    metric_name: str = ""
    planar: bool = False  # trains on the datastore's 2D images (else on its volumes)
    custom_iterations: bool = False  # True: the subclass's iteration updates run their own AMP

    def __init__(
        self,
        name: str,
        model_dir: str,
        publish_path: str,
        served_paths: list[str],
        description: str,
        labels: list[str],
        config: dict[str, Any],
    ):
        self.name = name
        self.served_paths = served_paths
        super().__init__(
            model_dir=model_dir,
            description=description,
            config={**TRAIN_DEFAULTS, **config},
            amp=True,
            publish_path=publish_path,
            stats_path=os.path.join(model_dir, f"{name}_train_stats.json"),
            labels=labels,
            tracking=None,
        )

    def stats(self):
        """The last run's stats; a run still marked running whose process is gone says it was interrupted."""
        stats = super().stats()
        if stats.get("status") == "running" and not _alive(stats.get("pid")):
            stats["status"] = "interrupted"
            stats["reason"] = (
                f"the training process ended without finishing (killed or crashed) after epoch {stats.get('epoch')}; "
                "the served model is unchanged"
            )
        return stats

    # -- data and initial weights -------------------------------------------------------------------
    def _served_checkpoint(self, request) -> Checkpoint | None:
        """The served model, when this training fine-tunes it (``init`` = ``current``)."""
        if request.get("init", "current") != "current":
            return None
        for path in reversed(self.served_paths):
            if os.path.exists(path):
                try:
                    return load_checkpoint(path, task=self.checkpoint_task)
                except CheckpointError as e:
                    logger.warning(f"not fine-tuning from {path}: {e}")
        return None

    def _channel_suffixes(self, request) -> list[str]:
        """Extra sequences per case: the served model's when fine-tuning, else the request's."""
        served = self._served_checkpoint(request)
        if served is not None:
            return list(served.meta["preprocessing"].get("channel_suffixes", []))
        return list(request.get("channel_suffixes") or [])

    def pre_process(self, request, datastore: Datastore):
        tag = request.get("label_tag") or DefaultLabelTag.FINAL.value
        datalist = labelled_datalist(datastore, tag, self._channel_suffixes(request), planar=self.planar)
        if not datalist:
            kind = "2D image" if self.planar else "volume"
            raise ValueError(f"no {kind} has a {tag!r} label (with all its sequences): nothing to train on")
        return datalist

    def partition_datalist(self, context: Context, shuffle: bool = True):
        """Validation images chosen by a hash of their id, not by a shuffle: as corrected cases
        accumulate, an image stays on the side it was on, so the served model (trained before) was not
        trained on the images that now judge it against the new one. Images of one ``group`` (one patient,
        near-duplicates) are hashed by the group, so they stay on one side. At least one image trains; with
        ``val_split`` > 0 at least one validates (a single labelled image, or a single group, does both)."""
        items = list(context.datalist)
        val_split = float(context.request.get("val_split", 0.2) or 0.0)
        if val_split <= 0 or not items:
            return items, []
        key = {item["id"]: _hash_fraction(str(item.get("group") or item["id"])) for item in items}
        ranked = sorted(items, key=lambda item: (key[item["id"]], item["id"]))
        keys = sorted(set(key.values()))
        if len(keys) == 1:
            return items, items
        # whole groups: those below val_split, at least the first and never all of them
        n_val = min(max(sum(k < val_split for k in keys), 1), len(keys) - 1)
        val_keys = set(keys[:n_val])
        return [i for i in ranked if key[i["id"]] not in val_keys], [i for i in ranked if key[i["id"]] in val_keys]

    def load_path(self, output_dir, pretrained=True):
        return None  # initial weights come from the served checkpoint (see network())

    def train_post_transforms(self, context: Context):
        return []

    def train_iteration_update(self, context: Context):
        return None  # MONAI's supervised step: loss_function(network(image), label)

    def val_iteration_update(self, context: Context):
        return None

    def val_inferer(self, context: Context):
        return SimpleInferer()

    def engine_amp(self, context: Context) -> bool:
        """AMP inside MONAI's default iterations (custom iterations handle it themselves)."""
        return self._amp and context.device.type == "cuda" and not self.custom_iterations

    @abstractmethod
    def _meta(self, context: Context) -> dict[str, Any]:
        """Checkpoint metadata of the current network (spec, preprocessing, training summary)."""

    def _served_metric(self, context: Context) -> tuple[float | None, str]:
        """The validation metric of the model in service on this run's validation images, and a note."""
        if context.evaluator is None or not context.val_datalist:
            return None, "no validation images: not compared"
        path = next((p for p in reversed(self.served_paths) if os.path.exists(p)), None)
        if path is None:
            return None, "no model in service: not compared"
        try:
            served = load_checkpoint(path, task=self.checkpoint_task)
        except CheckpointError as e:
            return None, f"the served model is unusable ({e}): not compared"
        if served.meta.get("preprocessing") != context.preprocessing:
            return None, "the served model preprocesses differently: not compared"
        network = context.network.module if hasattr(context.network, "module") else context.network
        trained = {k: v.detach().clone() for k, v in network.state_dict().items()}
        try:
            network.load_state_dict(served.state_dict)
        except (RuntimeError, KeyError) as e:
            network.load_state_dict(trained)
            return None, f"the served model has another architecture ({str(e).splitlines()[0]}): not compared"
        try:
            context.evaluator.run()
            value = float(context.evaluator.state.metrics.get(self.metric_name, np.nan))
        finally:
            network.load_state_dict(trained)
        if not np.isfinite(value):
            return None, "the served model's metric is undefined on these images: not compared"
        return value, f"served model {os.path.basename(path)} on the same {len(context.val_datalist)} validation images"

    # -- engines ------------------------------------------------------------------------------------
    def _create_evaluator(self, context: Context):
        if not context.val_datalist:
            return None
        return SupervisedEvaluator(
            device=context.device,
            val_data_loader=self.val_data_loader(context),
            network=context.network,
            iteration_update=self.val_iteration_update(context),
            inferer=self.val_inferer(context),
            key_val_metric=self.val_key_metric(context),
            val_handlers=[StatsHandler(output_transform=lambda x: None, iteration_log=False)],
            decollate=False,
            amp=self.engine_amp(context),
        )

    def _create_trainer(self, context: Context):
        handlers = [h for h in self.train_handlers(context) if not type(h).__name__.startswith("TensorBoard")]
        if context.evaluator:
            handlers = [h for h in handlers if not isinstance(h, ValidationHandler)]
            handlers.append(ValidationHandler(1, validator=context.evaluator, epoch_level=True))
        return SupervisedTrainer(
            device=context.device,
            max_epochs=context.max_epochs,
            train_data_loader=self.train_data_loader(context),
            network=context.network,
            optimizer=context.optimizer,
            loss_function=self.loss_function(context) or (lambda *_: None),
            iteration_update=self.train_iteration_update(context),
            key_train_metric={"train_loss": Average(output_transform=lambda out: float(out["loss"]))},
            metric_cmp_fn=lambda current, best: current < best,  # a loss: lower is better
            train_handlers=handlers,
            decollate=False,
            amp=self.engine_amp(context),
        )

    def finalize(self, context: Context):
        publisher = PublishBestModel(
            context,
            task=self.checkpoint_task,
            model_path=self._publish_path,
            stats_path=self._stats_path,
            make_meta=self._meta,
            metric_name=self.metric_name,
            served_metric=lambda: self._served_metric(context),
            gate=str(context.request.get("publish", "if_not_worse")) != "always",
        )
        publisher.attach(context.trainer, context.evaluator)
        context.publisher = publisher
        budget = float(context.request.get("max_train_minutes") or 0)
        if budget > 0:  # a wall-clock budget (benchmarks): stop, then publish as after the last epoch
            deadline = context.start_ts + 60.0 * budget

            def stop_at_deadline(engine):
                if time.time() > deadline:
                    engine.terminate()

            context.trainer.add_event_handler(Events.ITERATION_COMPLETED, stop_at_deadline)

    def train(self, rank, world_size, request, datalist):
        super().train(rank, world_size, request, datalist)
        with open(self._stats_path) as f:
            return json.load(f)
