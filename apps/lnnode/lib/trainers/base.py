"""What lnnode's train tasks share: fine-tuning the served model, the run's engines, the publisher.

A subclass gives its data, network, metric and checkpoint metadata (``_meta``); this class builds
MONAI's SupervisedTrainer/Evaluator around them, replaces MONAI Label's checkpoint savers by
:class:`PublishBestModel` (the best epoch is published atomically when training completes, the
previous model is kept), and honours an optional wall-clock budget (``max_train_minutes``).

Distributed data parallel (the request's ``multi_gpu``, as in MONAI Label): one process per GPU of ``gpus``
(``"all"`` or ``"0,1"``), or with ``device`` ``cpu`` ``cpu_processes`` processes on the gloo backend (a check of the
distributed path on a machine without GPUs). The processes meet through a file in a temp folder and talk over
loopback only; a process started by ``torchrun`` joins the launcher's group instead (``env://``). Each rank trains
on its shard of the training images (the detector) or draws its share of the node samples (the classifier); only
rank 0 validates, publishes (after every rank has finished its last step) and writes the stats. A failure on any
rank stops all of them, the served model stays, and the stats say which rank failed and why.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from abc import abstractmethod
from datetime import datetime, timedelta
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Events
from ignite.metrics import Average
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import StatsHandler, ValidationHandler
from monai.inferers import SimpleInferer
from monai.utils import set_determinism
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.tasks.train.basic_train import BasicTrainTask, Context
from monailabel.utils.others.generic import name_to_device
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException
from torch.nn.parallel import DistributedDataParallel

from lnnode.io.atomic import atomic_write_text
from lnnode.io.checkpoint import Checkpoint, CheckpointError, load_checkpoint

from .datalist import labelled_datalist
from .handlers import PublishBestModel, training_in_progress, training_lock

logger = logging.getLogger(__name__)

__all__ = ["LnnodeTrainTask", "TRAIN_DEFAULTS", "is_distributed", "launched_ranks", "shard", "unwrap"]

# request defaults of every lnnode train task (each adds its own: epochs, batch sizes, data loading)
TRAIN_DEFAULTS: dict[str, Any] = {
    "val_split": 0.2,
    "learning_rate": 1e-3,
    "label_tag": DefaultLabelTag.FINAL.value,
    "init": "current",  # "current": fine-tune the served model; "scratch": new weights
    "changed_weight": 2.0,  # a node the reader added, moved or relabelled counts this many times
    "publish": "if_not_worse",  # or "always": publish even below the served model's validation metric
    "multi_gpu": False,  # distributed data parallel: one process per GPU of "gpus" (see the module doc)
    "gpus": "all",
    "cpu_processes": 2,  # multi_gpu with device "cpu": this many gloo processes
    "tracking": "None",
}


DDP_TIMEOUT = timedelta(hours=6)  # a collective waiting this long means a rank is gone


def launched_ranks() -> tuple[int, int, int] | None:
    """(rank, local rank, world size) of a process that ``torchrun`` (or a launcher like it) started; else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world < 2 or "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), world


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DistributedDataParallel wrapper (what is saved and validated)."""
    return network.module if isinstance(network, DistributedDataParallel) else network


def is_distributed() -> bool:
    """Whether this process is one rank of a distributed training (its process group is up)."""
    return dist.is_available() and dist.is_initialized()


def shard(items: list) -> list:
    """This rank's share of ``items`` (equal-sized shards, so every rank runs the same number of steps; with
    fewer items than ranks every rank gets them all); all of them outside a distributed training."""
    world = dist.get_world_size() if is_distributed() else 1
    if world == 1 or len(items) < world:
        return list(items)
    per_rank = -(-len(items) // world)
    padded = [items[i % len(items)] for i in range(per_rank * world)]
    return padded[dist.get_rank() :: world]


def _backend(device: str) -> str:
    return "nccl" if str(device).startswith("cuda") else "gloo"


def _rank_main(rank: int, world_size: int, request: dict[str, Any], datalist: list, task: LnnodeTrainTask) -> None:
    """One spawned training process (one rank)."""
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s", force=True)
    # one machine: gloo and NCCL connect over loopback only
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    task.train(rank, world_size, request, datalist)


def _hash_fraction(image_id: str) -> float:
    """A stable number in [0, 1) per image id (the same on every run and machine)."""
    return int(hashlib.sha1(image_id.encode()).hexdigest()[:12], 16) / 16**12


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
        find_unused_parameters: bool = False,
    ):
        self.name = name
        self.served_paths = served_paths
        super().__init__(
            find_unused_parameters=find_unused_parameters,
            model_dir=model_dir,
            description=description,
            config={**TRAIN_DEFAULTS, **config},
            amp=True,
            publish_path=publish_path,
            stats_path=os.path.join(model_dir, f"{name}_train_stats.json"),
            labels=labels,
            tracking=None,
        )

    # -- one process, or one per GPU ---------------------------------------------------------------
    def __call__(self, request, datastore: Datastore):
        """Train as the request says; the model's training lock is held throughout (rank 0's process holds it in a
        torchrun launch), so a second run of the model stops before it reads anything."""
        launched = launched_ranks() if request.get("torchrun") else None
        multi = str({**self._config, **request}.get("multi_gpu")).lower() in ("true", "1") or launched is not None
        if launched is not None and launched[0] != 0:
            return self._distributed(request, datastore, launched)
        with training_lock(self._publish_path, self.name):
            if not multi:
                return super().__call__({**request, "multi_gpu": False}, datastore)
            return self._distributed(request, datastore, launched)

    def _distributed(self, request, datastore: Datastore, launched: tuple[int, int, int] | None):
        req = {**copy.deepcopy(self._config), **copy.deepcopy(request), "multi_gpu": True}
        req["run_id"] = req.get("run_id") or datetime.now().strftime("%Y%m%d_%H%M%S")
        req["device"] = name_to_device(req.get("device", "cuda"))
        datalist = self.pre_process(req, datastore)  # torchrun: rank 0's list and run id reach every rank
        if launched is not None:  # torchrun started this process: every rank runs this
            rank, local_rank, world = launched
            req.update(distributed_backend=_backend(req["device"]), distributed_url="env://", local_device=local_rank)
            return self.train(rank, world, req, datalist)
        world = self._world_size(req)
        if world < 2:
            logger.info(f"multi_gpu asked for, but {world} device(s): one process")
            return super().__call__({**request, "multi_gpu": False}, datastore)
        with tempfile.TemporaryDirectory(prefix="lnnode-ddp-") as folder:
            # a file store, not a TCP one: PyTorch's TCP store listens on every interface
            req.update(distributed_backend=_backend(req["device"]), distributed_url=f"file://{folder}/store")
            logger.info(f"distributed training: {world} processes ({req['distributed_backend']})")
            try:
                torch.multiprocessing.spawn(_rank_main, nprocs=world, args=(world, req, datalist, self))
            except (ProcessRaisedException, ProcessExitedException) as e:
                self._write_failure(req, e)
            finally:
                self.cleanup(req)
        return self.stats()

    @staticmethod
    def _world_size(request: dict[str, Any]) -> int:
        if not str(request["device"]).startswith("cuda"):
            return int(request.get("cpu_processes") or 2)
        gpus = str(request.get("gpus") or "all")
        return torch.cuda.device_count() if gpus == "all" else len(gpus.split(","))

    def _write_failure(self, request: dict[str, Any], error: Exception) -> None:
        """A rank failed and all were stopped: the stats say so (rank 0 may not have), and the error is raised (the
        server shows the training as failed). A run that published before a rank failed at its exit stays so."""
        # a spawned rank's error arrives as its traceback text: its last "SomeError: ..." line says what happened
        raised = [line for line in str(error).splitlines() if re.match(r"^[\w.]+(Error|Exception)\b", line)]
        detail = (raised[-1] if raised else str(error).strip().splitlines()[0])[:300]
        rank = getattr(error, "error_index", None)
        previous = super().stats()
        if previous.get("run_id") == request["run_id"] and previous.get("status") in ("published", "kept_previous"):
            logger.warning(f"training process {rank} failed after the run ended ({detail}); its result stands")
            return
        kept = previous if previous.get("run_id") == request["run_id"] else {}  # never another run's stats
        reason = f"training process {rank} failed ({detail}); all were stopped and the served model is unchanged"
        stats = {**kept, "run_id": request["run_id"], "pid": os.getpid(), "status": "failed", "reason": reason}
        logger.error(reason)
        atomic_write_text(self._stats_path, json.dumps(stats, indent=2, default=float))
        raise RuntimeError(reason) from None

    def _device(self, context: Context):
        if not is_distributed():
            return super()._device(context)
        device = str(context.request["device"])
        if not device.startswith("cuda"):
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.world_size))  # share the cores
            return torch.device("cpu")
        local = context.request.get("local_device")
        if local is None:
            gpus = str(context.request.get("gpus") or "all")
            local = context.local_rank if gpus == "all" else int(gpus.split(",")[context.local_rank])
        torch.cuda.set_device(int(local))
        return torch.device(f"cuda:{int(local)}")

    def _create_network_and_optimizer(self, context: Context):
        network = self.network(context).to(context.device)
        context.network = network
        optimizer = self.optimizer(context)
        if is_distributed():
            ids = [context.device.index] if context.device.type == "cuda" else None
            network = DistributedDataParallel(
                network,
                device_ids=ids,
                output_device=ids[0] if ids else None,
                find_unused_parameters=self._find_unused_parameters,
            )
        return network, optimizer

    def stats(self):
        """The last run's stats; a run still marked running whose process is gone says it was interrupted."""
        stats = super().stats()
        # the run's lock, not its pid: a replica on another host shares the model dir, not the process table
        if stats.get("status") == "running" and not training_in_progress(self._publish_path):
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
        network = unwrap(context.network)
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
        if not context.val_datalist or context.local_rank != 0:  # only rank 0 validates
            return None
        return SupervisedEvaluator(
            device=context.device,
            val_data_loader=self.val_data_loader(context),
            network=unwrap(context.network),  # DDP's forward may sync buffers with ranks that are not validating
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
        if is_distributed():
            # before rank 0 publishes: every rank has finished its last step (a rank that failed never gets here)
            context.trainer.add_event_handler(Events.COMPLETED, lambda _: dist.barrier())
        if context.local_rank == 0:
            self._attach_publisher(context)
        budget = float(context.request.get("max_train_minutes") or 0)
        if budget > 0:  # a wall-clock budget (benchmarks): stop, then publish as after the last epoch
            deadline = context.start_ts + 60.0 * budget

            def stop_at_deadline(engine):
                late = torch.tensor([float(time.time() > deadline)], device=context.device)
                if is_distributed():  # rank 0's clock decides for all: every rank stops at the same step
                    dist.broadcast(late, src=0)
                if late.item():
                    engine.terminate()

            context.trainer.add_event_handler(Events.ITERATION_COMPLETED, stop_at_deadline)

    def _attach_publisher(self, context: Context) -> None:
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

    def train(self, rank, world_size, request, datalist):
        if not request.get("multi_gpu"):
            return self._train(rank, world_size, request, datalist)
        if request.get("seed") is not None:
            set_determinism(int(request["seed"]) + rank)  # each rank its own augmentation and sampling
        # the process group is ours, not MONAI Label's: its timeout must outlast rank 0's validation of an epoch,
        # which the other ranks wait for (the backends' defaults are 10-30 minutes)
        dist.init_process_group(
            request["distributed_backend"],
            init_method=request["distributed_url"],
            world_size=world_size,
            rank=rank,
            timeout=DDP_TIMEOUT,
        )
        idist.sync()  # ignite joins the group on every rank now, not lazily on the first rank that asks
        shared = [datalist, request["run_id"]]
        dist.broadcast_object_list(shared, src=0)  # every rank trains on rank 0's list (torchrun: each read its own)
        datalist, request = shared[0], {**request, "run_id": shared[1]}
        try:  # MONAI Label's own distributed set-up (a group without a timeout, its data partition) stays off
            return self._train(rank, world_size, {**request, "multi_gpu": False, "processes": world_size}, datalist)
        finally:
            dist.destroy_process_group()

    def _train(self, rank, world_size, request, datalist):
        super().train(rank, world_size, request, datalist)
        if rank != 0:
            return {"rank": rank, "status": "done"}  # rank 0 publishes and reports
        with open(self._stats_path) as f:
            return json.load(f)
