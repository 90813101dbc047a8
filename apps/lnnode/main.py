"""lnnode: lymph-node detection and metastasis classification, served by MONAI Label.

Start it with ``monailabel start_server --app apps/lnnode --studies <folder>``; ``--conf`` options
are listed in the README. The models come from ``lib/configs`` (one TaskConfig each), as in MONAI
Label's sample apps; this file only wires them and turns bad requests into 4xx answers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Collection
from typing import Any

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from lib import guards, imageio
from lib.activelearning import DEFAULT_NOVELTY_WEIGHT, Uncertain
from lib.configs import CLASSIFICATION, DETECTION, PIPELINE, PIPELINE_OPTIONS, infer_config, task_configs
from lib.datastore import LnnodeDatastore
from lib.errors import NotFound, RequestError
from lib.infers.pipeline import NodePipeline
from lib.params import check_infer_params
from lib.review import summarise_reviews
from lib.scoring import NodeUncertaintyScoring

logger = logging.getLogger(__name__)

__version__ = "0.1.0"


def _served_scoring_methods() -> Collection[str]:
    # the app in service now (POST /reload/ builds a new one; the guards stay installed)
    from monailabel.interfaces.utils.app import app_instance

    return app_instance().info().get("scoring", {})


class LymphNodeApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        # trained models go to --conf model_dir (default <app>/model); the demo weights ship in <app>/model/demo
        self.model_dir = os.path.realpath(conf.get("model_dir") or os.path.join(app_dir, "model"))
        use_demo = conf.get("demo_weights", "true").lower() not in ("false", "0", "no")
        demo_dir = os.path.join(app_dir, "model", "demo") if use_demo else None
        os.makedirs(self.model_dir, exist_ok=True)
        available = task_configs()
        wanted = conf.get("models", "all")
        names = list(available) if wanted == "all" else [n.strip() for n in wanted.split(",") if n.strip()]
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ValueError(f"--conf models: unknown model(s) {unknown}; available: {', '.join(available)}")

        self.models = {}
        for name in names:
            config = available[name]()
            config.init(name, self.model_dir, conf, None, demo_dir=demo_dir)
            self.models[name] = config
        logger.info(f"+++ lnnode models: {list(self.models)}")
        # --conf auto_train_every K: after every K new final labels, queue a training of the models in
        # --conf auto_train_models (default: all) with the request options in --conf auto_train_params
        try:
            self.auto_train_every = int(conf.get("auto_train_every") or 0)
            self.auto_train_params = json.loads(conf.get("auto_train_params") or "{}")
        except ValueError as e:
            raise ValueError(f"--conf auto_train_every / auto_train_params: {e}") from None
        if not isinstance(self.auto_train_params, dict):
            raise ValueError("--conf auto_train_params must be a JSON object, e.g. '{\"max_epochs\": 5}'")
        if conf.get("max_image_voxels"):
            # every reader (server, training and scoring processes) gets the same conf: one limit
            imageio.MAX_IMAGE_VOXELS = int(conf["max_image_voxels"])
        try:
            # --conf max_upload_mb: the largest request body (image or label upload); 0 turns the check off
            self.max_upload_bytes = int(float(conf.get("max_upload_mb") or guards.DEFAULT_MAX_UPLOAD_MB) * 2**20)
        except ValueError:
            raise ValueError(f"--conf max_upload_mb: a number of megabytes, got {conf['max_upload_mb']!r}") from None
        try:
            # --conf al_novelty_weight: how much a case unlike the labelled ones adds to its uncertainty
            # (below 0: how much it takes away, familiar cases first)
            self.novelty_weight = float(conf.get("al_novelty_weight") or DEFAULT_NOVELTY_WEIGHT)
        except ValueError:
            raise ValueError(f"--conf al_novelty_weight: a number, got {conf['al_novelty_weight']!r}") from None
        if not math.isfinite(self.novelty_weight):
            raise ValueError(f"--conf al_novelty_weight: a finite number, got {self.novelty_weight}")
        self.auto_train_models = [m.strip() for m in (conf.get("auto_train_models") or "").split(",") if m.strip()]
        self._labels_since_training = 0

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="lnnode",
            description="Lymph-node detection and metastasis classification (CT, MR)",
            version=__version__,
            labels=["lymph_node"],
        )

    # -- wiring -------------------------------------------------------------------------------------
    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()  # a PACS over DICOMweb
        return LnnodeDatastore(
            self.studies,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, config in self.models.items():
            task = config.infer()
            infers.update(task if isinstance(task, dict) else {name: task})
        if DETECTION in infers:
            # one call for the whole chain (as the radiology app's vertebra pipeline chains its models)
            infers[PIPELINE] = NodePipeline(
                PIPELINE,
                infers[DETECTION],
                infers.get(CLASSIFICATION),
                config=infer_config(self.conf, PIPELINE_OPTIONS),
            )
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        for name, config in self.models.items():
            task = config.trainer()
            if task:
                trainers[name] = task
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        strategies: dict[str, Strategy] = {"random": Random(), "first": First()}
        if PIPELINE in self._infers:
            strategies["uncertain"] = Uncertain(self._infers[PIPELINE].channel_suffixes, self.novelty_weight)
        for config in self.models.values():
            s = config.strategy()
            if s:
                strategies.update(s if isinstance(s, dict) else {config.name: s})
        return strategies

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        methods: dict[str, ScoringMethod] = {}
        if PIPELINE in self._infers:
            # appearances are only needed when the strategy ranks by novelty
            methods["lymph_node_uncertainty"] = NodeUncertaintyScoring(
                self._infers[PIPELINE], describe=self.novelty_weight != 0
            )
        for config in self.models.values():
            m = config.scoring_method()
            if m:
                methods.update(m if isinstance(m, dict) else {config.name: m})
        return methods

    # -- request checks (stock MONAI Label answers these with a 500) --------------------------------
    @staticmethod
    def _known(kind: str, name: Any, registry: dict) -> None:
        if not name or name not in registry:
            raise NotFound(f"unknown {kind} {name!r}; available: {', '.join(sorted(registry)) or 'none'}")

    def _check_image(self, image: Any, datastore: Datastore) -> None:
        if not isinstance(image, str) or not image:
            raise RequestError("no image given: pass an image id from the datastore, or upload a file")
        if os.path.isabs(image):
            # the /infer endpoint puts uploads in the temp folder; no other server path may be read
            if os.path.commonpath([os.path.realpath(image), os.path.realpath(tempfile.gettempdir())]) != (
                os.path.realpath(tempfile.gettempdir())
            ) or not os.path.isfile(image):
                raise RequestError(f"image {image!r}: give an image id or upload the file, not a server path")
            return
        uri = datastore.get_image_uri(image)
        if not uri or not os.path.exists(uri):
            raise NotFound(f"image {image!r} is not in the datastore")

    def infer(self, request, datastore=None):
        self._known("model", request.get("model"), self._infers)
        check_infer_params(request)
        image = request.get("image")
        self._check_image(image, datastore or self.datastore())
        request = dict(request)
        # results name the image by its datastore id (an upload may pass params {"image_id": ...})
        request.setdefault("image_id", "upload" if os.path.isabs(image) else image)
        request["image"] = self._sequences(request["model"], image, datastore or self.datastore())
        # MONAI Label would store the returned markups file as the "original" label; lnnode keeps
        # its results itself (the markups file is not a label)
        request["save_label"] = False
        answer = super().infer(request, datastore)
        if request["model"] == PIPELINE and not os.path.isabs(image):
            self._keep_original(image, answer.get("params"), datastore or self.datastore())
        return answer

    def _keep_original(self, image_id: str, result: Any, datastore: Datastore) -> None:
        """Store the model's result as the case's ``original`` label: a review is compared with it."""
        if not isinstance(result, dict) or result.get("schema") is None:
            return
        with tempfile.TemporaryDirectory(prefix="lnnode-original-") as tmp:
            path = os.path.join(tmp, f"{image_id}.json")
            try:
                with open(path, "w") as f:
                    json.dump(result, f)
                datastore.save_label(image_id, path, DefaultLabelTag.ORIGINAL.value, {"model": result.get("model")})
            except Exception as e:  # the reader still gets the result; only the comparison is lost
                logger.warning(f"{image_id}: model result not kept as 'original': {e}")

    def on_save_label(self, image_id, label_id):
        """A reviewed label was stored: answer with what the reader changed; maybe start training."""
        answer: dict[str, Any] = {}
        datastore = self.datastore()
        reviewed = datastore.pop_review(image_id) if isinstance(datastore, LnnodeDatastore) else None
        if reviewed is not None:
            tag, review = reviewed
            if review is not None:
                answer["review"] = review
            if tag != DefaultLabelTag.FINAL.value:
                return answer
            self._labels_since_training += 1
            if self.auto_train_every and self._labels_since_training >= self.auto_train_every:
                self._labels_since_training = 0
                models = [m for m in (self.auto_train_models or list(self._trainers)) if m in self._trainers]
                params = {m: dict(self.auto_train_params) for m in models}
                answer["training"] = self.async_training(models, params=params, enqueue=True)
        return answer

    def on_init_complete(self):
        super().on_init_complete()
        if self._server_mode:
            guards.install(self._server_app(), self.max_upload_bytes, _served_scoring_methods)

    @staticmethod
    def _server_app():
        from monailabel.app import app

        return app

    def async_scoring(self, method, params=None):
        # a training process asks the server to re-score once it has published; MONAI Label posts to
        # /scoring/<method>, which refuses while another scoring runs, and the refresh would be lost.
        # /scoring/ queues behind it instead.
        if self._server_mode or method or not self._scoring_methods:
            return super().async_scoring(method, params)
        return self._local_request("/scoring/", params, "Scoring")

    def info(self):
        meta = super().info()
        if isinstance(self._datastore, LnnodeDatastore):
            meta["review"] = summarise_reviews(self._datastore.reviews())
        meta["auto_train"] = {
            "every": self.auto_train_every,
            "models": self.auto_train_models or list(self._trainers),
            "params": self.auto_train_params,
            "labels_since_training": self._labels_since_training,
        }
        return meta

    def bundle_path(self, model):
        # MONAI Label asks for this before it starts a background task (POST /train/<model>, batch infer):
        # the one place to refuse an unknown model with a 404 instead of a 200 and a failing process
        if model is not None:
            self._known("model", model, {**self._infers, **self._trainers})
        return super().bundle_path(model)

    def _sequences(self, model: str, image: str, datastore: Datastore) -> str | list[str]:
        """A multi-sequence model reads the case's other sequences too (``<id><suffix>`` images)."""
        suffixes = getattr(self._infers[model], "channel_suffixes", lambda: [])()
        if not suffixes:
            return image
        if os.path.isabs(image):
            raise RequestError(f"model {model!r} reads several sequences {suffixes}: infer on a datastore image")
        paths = [datastore.get_image_uri(image)]
        for companion in (f"{image}{suffix}" for suffix in suffixes):
            uri = datastore.get_image_uri(companion)
            if not uri:
                raise NotFound(f"model {model!r} also needs image {companion!r} (sequence {companion[len(image) :]})")
            paths.append(uri)
        return paths

    def train(self, request):
        self._known("model", request.get("model"), self._trainers)
        return super().train(request)

    def next_sample(self, request):
        self._known("strategy", request.get("strategy") or "random", self._strategies)
        return super().next_sample(request)

    def scoring(self, request, datastore=None):
        self._known("scoring method", request.get("method"), self._scoring_methods)
        return super().scoring(request, datastore)
