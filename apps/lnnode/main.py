"""lnnode: lymph-node detection and metastasis classification, served by MONAI Label.

Start it with ``monailabel start_server --app apps/lnnode --studies <folder>``; ``--conf`` options are
in docs/reference.md. As in MONAI Label's sample apps, the models come from ``lib/configs`` (one
TaskConfig each) and this file only wires them; the request checks are in ``lib/server``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from lib.activelearning import DEFAULT_STRATEGY, Badge, Uncertain
from lib.configs import PIPELINE_2D_OPTIONS, PIPELINE_OPTIONS, infer_config, init_task_configs, modality_of
from lib.datastore import DicomwebDatastore, LnnodeDatastore, dicomweb_datastore, keep_original
from lib.infers import NodePipeline
from lib.options import AppOptions
from lib.scoring import NodeUncertaintyScoring
from lib.server import guards
from lib.server.requests import check_known, is_upload, prepare_infer
from lib.trainers.auto import AutoTrain
from lnnode import __version__
from lnnode.contracts import CLASSIFICATION, CLASSIFICATION_2D, DETECTION, DETECTION_2D, PIPELINE, PIPELINE_2D
from lnnode.corrections import summarise_reviews
from lnnode.io import image as imageio

logger = logging.getLogger(__name__)


class LymphNodeApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.options = o = AppOptions.from_conf(conf, app_dir)
        if o.max_image_voxels is not None:
            # every reader (server, training and scoring processes) gets the same conf: one limit
            imageio.MAX_IMAGE_VOXELS = o.max_image_voxels
        os.makedirs(o.model_dir, exist_ok=True)
        self.models = init_task_configs(o.models, o.model_dir, conf, o.demo_dir)
        logger.info(f"+++ lnnode models: {list(self.models)}")
        self.auto_train = AutoTrain(o.auto_train_every, o.auto_train_models, o.auto_train_params, model_dir=o.model_dir)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="lnnode",
            description="Lymph-node detection and metastasis classification (CT, MR; 2D: ultrasound, key slices)",
            version=__version__,
            labels=["lymph_node"],
        )

    # -- wiring -------------------------------------------------------------------------------------
    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return dicomweb_datastore(self.studies, self.options)  # a PACS; MONAI Label's own would fetch dcmqi
        auto_reload, read_only = settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD, settings.MONAI_LABEL_DATASTORE_READ_ONLY
        return LnnodeDatastore(self.studies, auto_reload=auto_reload, read_only=read_only)

    def _from_configs(self, kind: str, built: dict[str, Any]) -> dict[str, Any]:
        """``built`` plus what each model's TaskConfig gives for ``kind`` (infer, trainer, strategy...)."""
        for config in self.models.values():
            task = getattr(config, kind)()
            if task:
                built.update(task if isinstance(task, dict) else {config.name: task})
        return built

    def init_infers(self):
        infers = self._from_configs("infer", {})
        # one call for the whole chain (as the radiology app's vertebra pipeline chains its models)
        for pipeline, detection, classification, options in (
            (PIPELINE, DETECTION, CLASSIFICATION, PIPELINE_OPTIONS),
            (PIPELINE_2D, DETECTION_2D, CLASSIFICATION_2D, PIPELINE_2D_OPTIONS),
        ):
            if detection in infers:
                config = infer_config(self.conf, options)
                infers[pipeline] = NodePipeline(pipeline, infers[detection], infers.get(classification), config=config)
        return infers

    def init_trainers(self):
        return self._from_configs("trainer", {})

    def init_strategies(self):
        strategies = {}
        if PIPELINE in self._infers or PIPELINE_2D in self._infers:
            suffixes = self._infers[PIPELINE].channel_suffixes if PIPELINE in self._infers else list
            strategies = {DEFAULT_STRATEGY: Badge(suffixes), "uncertain": Uncertain(suffixes)}
        # the default first: a viewer that preselects the first strategy listed (/info) preselects it
        strategies.update(random=Random(), first=First())
        return self._from_configs("strategy", strategies)

    def init_scoring_methods(self):
        methods = {}
        if PIPELINE in self._infers or PIPELINE_2D in self._infers:
            modalities = {planar: modality_of(self.conf, planar) for planar in (False, True)}
            methods["lymph_node_uncertainty"] = NodeUncertaintyScoring(
                self._infers.get(PIPELINE), self._infers.get(PIPELINE_2D), modalities
            )
        return self._from_configs("scoring_method", methods)

    def on_init_complete(self):
        super().on_init_complete()
        if self._server_mode:
            guards.install(guards.server_app(), self.options.max_upload_bytes, guards.served_scoring_methods)

    # -- requests (stock MONAI Label answers bad ones with a 500) ------------------------------------
    def infer(self, request, datastore=None):
        datastore = datastore or self.datastore()
        answer = super().infer(prepare_infer(request, self._infers, datastore), datastore)
        image = request.get("image")
        if request.get("model") in (PIPELINE, PIPELINE_2D) and not is_upload(image):
            keep_original(datastore, image, answer.get("params"))  # a review is compared with it
        return answer

    def on_save_label(self, image_id, label_id):
        """A reviewed label was stored: answer with what the reader changed; maybe start training."""
        datastore = self.datastore()
        reviewed = datastore.pop_review(image_id) if isinstance(datastore, LnnodeDatastore) else None
        if reviewed is None:
            return {}
        tag, review = reviewed
        answer: dict[str, Any] = {"review": review} if review is not None else {}
        if tag == DefaultLabelTag.FINAL.value:
            training = self.auto_train.on_final_label(self._trainers, self.async_training, self._is_planar(image_id))
            if training is not None:
                answer["training"] = training
            if isinstance(datastore, DicomwebDatastore):  # last: a PACS that fails answers 502/504, all else done
                answer["pacs"] = datastore.write_back(image_id)
        return answer

    def _is_planar(self, image_id: str) -> bool | None:
        """Whether a datastore image is 2D (None: it cannot be told, every model may train)."""
        try:
            return imageio.is_planar(imageio.read_geometry(self.datastore().get_image_uri(image_id), allow_2d=True))
        except Exception:  # noqa: BLE001 - a label was stored; training choice falls back to every model
            return None

    def async_scoring(self, method, params=None):
        # a training process asks for a re-score once it has published: /scoring/<method> would refuse
        # while another scoring runs and the refresh would be lost; /scoring/ queues behind it
        if self._server_mode or method or not self._scoring_methods:
            return super().async_scoring(method, params)
        return self._local_request("/scoring/", params, "Scoring")

    def info(self):
        meta = super().info()
        if isinstance(self._datastore, LnnodeDatastore):
            meta["review"] = summarise_reviews(self._datastore.reviews())
        meta["auto_train"] = self.auto_train.info(self._trainers)
        return meta

    def bundle_path(self, model):
        # MONAI Label asks for this before it starts a background task (POST /train/<model>, batch infer):
        # the one place to refuse an unknown model with a 404 instead of a 200 and a failing process
        if model is not None:
            check_known("model", model, {**self._infers, **self._trainers})
        return super().bundle_path(model)

    def train(self, request):
        check_known("model", request.get("model"), self._trainers)
        return super().train(request)

    def next_sample(self, request):
        check_known("strategy", request.get("strategy") or "random", self._strategies)
        return super().next_sample(request)

    def scoring(self, request, datastore=None):
        check_known("scoring method", request.get("method"), self._scoring_methods)
        return super().scoring(request, datastore)
