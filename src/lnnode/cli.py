"""lnnode: lymph-node phantoms, data import, training, evaluation and model management.

Every subcommand is documented in ``lnnode <command> --help`` and in docs/reference.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from lnnode.appdir import APP_DIR, DEMO_MODEL_DIR
from lnnode.contracts import CLASSIFICATION, CLASSIFICATION_2D, DETECTION, DETECTION_2D, TRAINABLE

DEFAULT_MODEL_DIR = APP_DIR / "model"


def _add_synth(sub) -> None:
    from lnnode.phantoms import add_synth_arguments, run_synth

    p = sub.add_parser(
        "synth",
        help="write lymph-node phantoms (CT or MR) with ground truth as a studies folder",
        description="Deterministic lymph-node phantoms: images, label JSON (label contract), instance masks.",
    )
    add_synth_arguments(p)
    p.set_defaults(run=run_synth)


def _add_import(sub) -> None:
    p = sub.add_parser(
        "import",
        help="import images + node masks (+ classes CSV) into a studies folder with final labels",
        description=(
            "SOURCE holds images/<case>.<ext> (or a DICOM series folder images/<case>/) and "
            "masks/<case>.nii.gz (instance mask) or masks/<case>/<node>.nii.gz (one mask per node); "
            "an optional classes.csv has columns case,node,class. Or --table CSV: one row per case "
            "(case,image,masks[,label][,group]; 2D images too, e.g. BUSI's cases.csv)."
        ),
    )
    p.add_argument("source", nargs="?", help="folder with images/ and masks/ (not with --table)")
    p.add_argument(
        "--table",
        help="CSV with columns case,image,masks (';'-separated),label (benign|malignant|metastatic|normal),group; "
        "paths relative to the CSV",
    )
    p.add_argument("--studies", required=True, help="studies folder to write (created if missing)")
    p.add_argument("--classes", help="CSV with columns case,node,class (default: SOURCE/classes.csv if present)")
    p.add_argument(
        "--node-pattern",
        help="regex with groups 'case' and 'node' grouping flat per-node mask files into cases, "
        "e.g. '(?P<case>.+)_lesion_(?P<node>\\d+).*'",
    )
    p.add_argument("--no-instances", action="store_true", help="do not write labels/instances/<case>.nii.gz")
    p.add_argument("--overwrite", action="store_true", help="replace existing final labels")
    p.add_argument("--reviewer", help="reviewer name recorded in the labels")
    p.set_defaults(run=_run_import)


def _run_import(args) -> int:
    from lnnode.data.importer import import_dataset
    from lnnode.data.table import import_table

    if (args.source is None) == (args.table is None):
        raise ValueError("give SOURCE (images/ + masks/) or --table CSV, not both")
    if args.table:
        report = import_table(args.table, args.studies, overwrite=args.overwrite, reviewer=args.reviewer)
        print(report.summary())
        return 0 if report.cases else 1
    report = import_dataset(
        args.source,
        args.studies,
        classes_csv=args.classes,
        node_pattern=args.node_pattern,
        write_instances=not args.no_instances,
        overwrite=args.overwrite,
        reviewer=args.reviewer,
    )
    print(report.summary())
    return 0 if report.cases else 1


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a studies folder (the same train task /train/ runs on the server)",
        description="Train a model on every image of STUDIES with a label of --label-tag (the classifier: on "
        "every node with a class) and publish the best epoch to --model-dir (the previous model is kept "
        "for rollback).",
    )
    p.add_argument("model", choices=TRAINABLE, help="which model to train")
    p.add_argument("--studies", required=True, help="studies folder with images and labels")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR), help="where the model is published")
    p.add_argument("--label-tag", default="final", help="label tag to train from (default: final)")
    p.add_argument("--epochs", type=int, default=50, help="training epochs (default: 50)")
    p.add_argument("--init", choices=["current", "scratch"], default="current", help="fine-tune or start anew")
    p.add_argument("--val-split", type=float, default=0.2, help="share of images held out for validation")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (AdamW)")
    p.add_argument("--patches", type=int, default=4, help="detector: patches per image per step")
    p.add_argument("--batch-size", type=int, help="classifier: node crops per step (default 16)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="distributed data parallel over this many GPUs, one process each (with --device cpu: this many "
        "gloo processes, a check of the distributed path without GPUs). Under torchrun, lnnode train joins the "
        "launcher's process group instead (e.g. torchrun --nnodes 2 --nproc-per-node 4 ... -m lnnode.cli train ...)",
    )
    p.add_argument(
        "--modality",
        choices=["ct", "mr", "us"],
        help="intensity normalisation of a new model (default: ct; us for the 2D models)",
    )
    p.add_argument(
        "--spec",
        help="JSON of DetectorSpec / ClassifierSpec fields for a new model, e.g. '{\"fpn_channels\": 48}' or "
        '\'{"architecture": "2.5d", "pretrained_path": "resnet18.pth"}\'',
    )
    p.add_argument(
        "--no-shape-features",
        action="store_true",
        help="3D classifier: the CNN logit alone (default: fused with the nodes' measured shape, fitted on the "
        "validation nodes)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (reproducible runs)")
    p.add_argument(
        "--publish",
        choices=["if_not_worse", "always"],
        default="if_not_worse",
        help="publish only if the new model's validation metric is not below the served model's on the same "
        "validation images (default), or always",
    )
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from lnnode.training import train_model

    extra = {"patches_per_image": args.patches, "publish": args.publish, "shape_features": not args.no_shape_features}
    if args.batch_size:
        extra["train_batch_size"] = args.batch_size
    if args.gpus > 1:
        gpus = {"gpus": ",".join(map(str, range(args.gpus)))} if args.device.startswith("cuda") else {}
        extra.update(multi_gpu=True, cpu_processes=args.gpus, **gpus)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "RANK" in os.environ:
        extra["torchrun"] = True  # started by torchrun: join its process group (a server never does by itself)
    stats = train_model(
        args.model,
        studies=args.studies,
        model_dir=args.model_dir,
        label_tag=args.label_tag,
        epochs=args.epochs,
        init=args.init,
        val_split=args.val_split,
        learning_rate=args.lr,
        device=args.device,
        modality=args.modality,
        spec=json.loads(args.spec) if args.spec else None,
        seed=args.seed,
        extra=extra,
    )
    if os.environ.get("RANK", "0") != "0":
        return 0  # a torchrun worker: rank 0 publishes and reports
    keys = ("status", "reason", "best_metric", "best_metric_epoch", "compared_with_served")
    print(json.dumps({k: stats.get(k) for k in keys}, indent=2))
    return 0 if stats.get("status") in ("published", "kept_previous") else 1


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate on labelled images: detection (FROC, CPM, AP) or classification (AUC, rules, N stage)",
        description="--task detection (default) runs the detector on every image of STUDIES with a --label-tag "
        "label and writes metrics.json and froc.png to --out. --task classification classifies the labelled "
        "nodes that have a class, applies the size and morphology rules to the same nodes, runs the pipeline "
        "for the N-stage hint and writes classification.json, roc.png and reliability.png.",
    )
    p.add_argument("--task", choices=["detection", "classification"], default="detection", help="what to evaluate")
    p.add_argument("--studies", required=True, help="studies folder with images and ground-truth labels")
    p.add_argument("--label-tag", default="final", help="ground-truth label tag (default: final)")
    p.add_argument("--model", help="checkpoint of the evaluated model (default: the served one in --model-dir)")
    p.add_argument("--detector", help="classification: detector for the N-stage hint (default: the served one)")
    p.add_argument("--no-stage", action="store_true", help="classification: skip the pipeline's N-stage hint")
    p.add_argument("--bootstrap", type=int, default=2000, help="classification: bootstrap resamples (AUC CI)")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR), help="model folder (default: the app's)")
    p.add_argument("--out", required=True, help="output folder for metrics.json and froc.png")
    p.add_argument("--criterion", choices=["iou", "center"], default="iou", help="hit criterion (default: iou)")
    p.add_argument("--iou", type=float, default=0.1, help="IoU threshold of the iou criterion (default 0.1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--2d",
        dest="planar",
        action="store_true",
        help="the served 2D models by default (lymph_node_*_2d) and the 2D images of STUDIES; a --model "
        "checkpoint says its kind itself",
    )
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from lnnode.evaluation import evaluate_classification, evaluate_studies

    detection, classification = (DETECTION_2D, CLASSIFICATION_2D) if args.planar else (DETECTION, CLASSIFICATION)
    if args.task == "classification":
        classifier = args.model or _served_model(args.model_dir, classification)
        detector = None if args.no_stage else args.detector or _served_model(args.model_dir, detection)
        report = evaluate_classification(
            args.studies, classifier, args.out, args.label_tag, detector, args.device, n_boot=args.bootstrap
        )
        for name, r in report["nodes"]["scorers"].items():
            print(f"{name}: AUC {r['auc']:.3f} (95% CI {r['auc_ci95'][0]:.3f}-{r['auc_ci95'][1]:.3f})")
        if "n_stage" in report:
            print(
                f"N-stage hint vs truth: kappa {report['n_stage']['kappa']:.3f} ({report['n_stage']['n_cases']} cases)"
            )
        print(f"wrote {Path(args.out) / 'classification.json'}, roc.png and reliability.png")
        return 0
    model = args.model or _served_model(args.model_dir, detection)
    metrics = evaluate_studies(
        args.studies, model, args.out, args.label_tag, args.criterion, args.iou, device=args.device
    )
    print(
        f"{metrics['n_volumes']} volumes, {metrics['n_nodes']} nodes ({metrics['criterion']}): "
        f"CPM {metrics['cpm']:.3f}, AP@0.1 {metrics['ap@0.1']:.3f}, AP@0.5 {metrics['ap@0.5']:.3f}"
    )
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'froc.png'}")
    return 0


def _served_model(model_dir: str, name: str) -> str:
    for path in (Path(model_dir) / f"{name}.pt", DEMO_MODEL_DIR / f"{name}.pt"):
        if path.exists():
            return str(path)
    raise SystemExit(f"no {name} model in {model_dir} (nor demo weights); train one or pass --model")


def _add_demo_weights(sub) -> None:
    p = sub.add_parser(
        "demo-weights",
        help="regenerate a shipped demo model (phantoms, fixed seeds, CPU; the 2D models: BUSI)",
        description="Writes phantoms to a work folder (the 2D models: imports BUSI, --data), trains the model from "
        "scratch with fixed seeds and writes apps/lnnode/model/demo/<model>.pt (or to --out).",
    )
    p.add_argument("--model", choices=TRAINABLE, default=DETECTION, help="which model (default: the detector)")
    p.add_argument("--work", default="demo/demo-weights", help="work folder for the training phantoms")
    p.add_argument("--out", default=str(DEMO_MODEL_DIR), help="folder for the demo checkpoint")
    p.add_argument("--cases", type=int, help="training phantoms (default: 32 detector, 160 classifier)")
    p.add_argument("--epochs", type=int, help="epochs (default: 60 detector, 25 classifier)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--data", help="2D models: the BUSI folder (cases.csv, images/, masks/; default ../shared/...)")
    p.set_defaults(run=_run_demo_weights)


def _run_demo_weights(args) -> int:
    from lnnode.training import make_demo_weights

    path, stats = make_demo_weights(
        args.work, args.out, args.cases, args.epochs, args.device, model=args.model, data=args.data
    )
    metric = f"{stats.get('key_metric_name')} {stats.get('best_metric')}"
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB); validation {metric}")
    return 0


def _add_mine_negatives(sub) -> None:
    p = sub.add_parser(
        "mine-negatives",
        help="add a detector's certain false positives on phantoms to their labels' rejected boxes (hard negatives)",
        description="Runs the detector on every lnnode-synth phantom of --studies with a --label-tag label and adds "
        "up to --max-per-case of its false positives per case (highest score first) to the label's rejected list, "
        "which the detector trainer samples patches on. Synthetic phantoms: any box that overlaps no node; real CT "
        "backgrounds: only boxes centred in an organ/vessel mask or below -500 / above 300 HU (the scan's own nodes "
        "are not labelled). Images lnnode synth did not make are left alone.",
    )
    p.add_argument("--studies", required=True, help="studies folder written by lnnode synth")
    p.add_argument("--model", required=True, help="detector checkpoint (.pt)")
    p.add_argument("--label-tag", default="final", help="label tag (default: final)")
    p.add_argument("--max-per-case", type=int, default=8, help="boxes added per case and run (default: 8)")
    p.add_argument("--score-thresh", type=float, help="detection score threshold (default: the model's)")
    p.add_argument("--real-data", help="real data folder of the backgrounds' organ masks (default: as lnnode synth)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(run=_run_mine_negatives)


def _run_mine_negatives(args) -> int:
    from lnnode.mining import mine_hard_negatives

    report = mine_hard_negatives(args.studies, args.model, args.label_tag, args.max_per_case, args.score_thresh,
                                 args.real_data, args.device)  # fmt: skip
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def _add_rollback(sub) -> None:
    p = sub.add_parser(
        "rollback",
        help="serve the previous model again (undoes the last publish; run again to redo)",
        description="Swaps <model-dir>/<model>.pt and <model>.previous.pt; the server picks it up on the next request.",
    )
    p.add_argument("model", choices=TRAINABLE, help="which model")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR), help="model folder (default: the app's)")
    p.set_defaults(run=_run_rollback)


def _run_rollback(args) -> int:
    from lnnode.io.checkpoint import rollback

    path = rollback(Path(args.model_dir) / f"{args.model}.pt")
    print(f"{path} is the previous model again")
    return 0


def _add_infer(sub) -> None:
    from lnnode.distributed import add_ray_arguments

    p = sub.add_parser(
        "infer",
        help="run the pipeline (detect, classify, measure, rules) on image files, without a server",
        description="SOURCE: an image file (.nii.gz, .nii, .nrrd, .mha), a folder of them, or a folder holding one "
        "DICOM series. Writes <case>.json (the result contract, world LPS mm) and <case>.mrk.json (Slicer "
        "markups of the boxes) per case to --out as each case finishes, with the models the server serves from "
        "--model-dir (else the demo models) and the server's parameter checks. A case whose outputs are complete "
        "already is skipped, so a stopped run resumes; --ray runs the cases on a Ray cluster. SOURCE may be a "
        "DICOMweb root (http://pacs:8042/dicom-web) with --study/--study-list: each CT and MR series of those "
        "studies is a case (its id the SeriesInstanceUID), fetched where it runs.",
    )
    p.add_argument("source", help="image file, folder of image files, DICOM series folder, or DICOMweb root URL")
    p.add_argument("--study", action="append", default=[], help="DICOMweb: a StudyInstanceUID to read (repeat)")
    p.add_argument("--study-list", help="DICOMweb: a file of StudyInstanceUIDs, one per line ('#' comments)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR), help="model folder (default: the app's)")
    p.add_argument("--no-demo-weights", action="store_true", help="do not fall back to the shipped demo models")
    p.add_argument("--score-thresh", type=float, help="detection score threshold (default: the checkpoint's)")
    p.add_argument("--nms-thresh", type=float, help="NMS IoU threshold (default: the checkpoint's)")
    p.add_argument("--max-boxes", type=int, help="most boxes per image (default: the checkpoint's)")
    p.add_argument("--tta", type=int, help="flips averaged per node, 1-8 (default 8)")
    p.add_argument("--p-thresh", type=float, help="p_metastasis from which a node is suspicious (default 0.5)")
    p.add_argument("--suspicious-by", choices=["classifier", "size_10mm", "morphology"], help="staging criterion")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (with --ray: cuda, each worker's own GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--dicom",
        action="store_true",
        help="also write a DICOM SEG + SR of each result to <case>.dicom/ (with the image as a DICOM series "
        "when it is not one)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="run every case again, also those whose outputs are complete (default: skip them)",
    )
    add_ray_arguments(p)
    p.set_defaults(run=_run_infer)


def _run_infer(args) -> int:
    from lnnode.distributed import ray_options
    from lnnode.inference import infer_files

    names = ("score_thresh", "nms_thresh", "max_boxes", "tta", "p_thresh", "suspicious_by", "device")
    params = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    demo = None if args.no_demo_weights else DEMO_MODEL_DIR
    ray = ray_options(args.ray, args.device, args.workers, args.cpus_per_worker, args.gpus_per_worker)
    report = infer_files(
        args.source,
        args.out,
        args.model_dir,
        demo,
        params,
        progress=not args.no_progress,
        verbose=args.verbose,
        dicom=args.dicom,
        force=args.force,
        ray=ray,
        studies=[*args.study, *_study_list(args.study_list)],
    )
    print(report.summary())
    return 0 if (report.written or report.skipped) and not report.failed else 1


def _study_list(path: str | None) -> list[str]:
    if path is None:
        return []
    lines = (line.split("#")[0].strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line]


def _add_score(sub) -> None:
    from lnnode.distributed import add_ray_arguments

    p = sub.add_parser(
        "score",
        help="compute the active-learning uncertainty of every unlabelled image of a studies folder",
        description="Scores every image of STUDIES without a --label-tag label as the server's "
        "lymph_node_uncertainty scoring method does (node-probability entropy + detection disagreement under a "
        "left-right flip) and stores the scores in the datastore's image info, where the server's 'uncertain' "
        "strategy reads them. An image scored by the models now in service is skipped (--force rescores it); "
        "--ray scores on a Ray cluster.",
    )
    p.add_argument("--studies", required=True, help="studies folder (the server's datastore)")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR), help="the server's model folder (default: the app's)")
    p.add_argument("--no-demo-weights", action="store_true", help="do not fall back to the shipped demo models")
    p.add_argument("--label-tag", default="final", help="label tag that counts as labelled (default: final)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (with --ray: cuda, each worker's own GPU)")
    p.add_argument("--force", action="store_true", help="score every unlabelled image again, also up-to-date ones")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_ray_arguments(p)
    p.set_defaults(run=_run_score)


def _run_score(args) -> int:
    from lnnode.distributed import ray_options
    from lnnode.inference import score_studies

    report = score_studies(
        args.studies,
        args.model_dir,
        None if args.no_demo_weights else DEMO_MODEL_DIR,
        device=args.device,
        label_tag=args.label_tag,
        force=args.force,
        progress=not args.no_progress,
        verbose=args.verbose,
        ray=ray_options(args.ray, args.device, args.workers, args.cpus_per_worker, args.gpus_per_worker),
    )
    print(report.summary())
    return 1 if report.failed else 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write the DICOM SEG + SR (TID 1500) of a studies folder's labels",
        description="Per labelled case: a DICOM SEG of the node delineations (one segment per node) and a TID 1500 "
        "SR measurement report (short/long axis, probability, class, rules), on the case's DICOM series (--dicom), "
        "else on the image written as a DICOM series. Into labels/<tag>/<id>.dicom/ beside the label, or "
        "--out/<id>/. Exporting again supersedes the earlier report (the new SR names it as predecessor).",
    )
    p.add_argument("--studies", required=True, help="studies folder (images + labels/<tag>/<id>.json)")
    p.add_argument("--image", action="append", default=[], help="a case id (repeat; default: every labelled case)")
    p.add_argument("--tag", default="final", help="label tag (default final; original: the stored model results)")
    p.add_argument("--dicom", help="the DICOM series folder the case's image was made from (with one --image)")
    p.add_argument(
        "--modality",
        choices=["CT", "MR"],
        help="of an image that is not DICOM (default: CT when it holds values below -500, i.e. HU, else MR)",
    )
    p.add_argument("--out", help="output folder (default: beside each label)")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from lnnode.dicom import export_studies

    done = export_studies(args.studies, args.image, args.tag, args.out, args.dicom, args.modality)
    for image_id, exported in done.items():
        if isinstance(exported, str):
            print(f"{image_id}: not exported: {exported}")
        else:
            n = len(exported.report.tracking_uids)
            written = " (image written as a DICOM series)" if exported.source.written else ""
            print(f"{image_id}: {n} node(s) -> {exported.folder}{written}")
    failed = sum(isinstance(e, str) for e in done.values())
    print(f"{len(done) - failed} case(s) exported, {failed} failed")
    return 1 if failed else 0


def _add_app_dir(sub) -> None:
    p = sub.add_parser(
        "app-dir",
        help="print the folder of the MONAI Label app (for monailabel start_server --app)",
        description='monailabel start_server --app "$(lnnode app-dir)" --studies DIR serves the installed app.',
    )
    p.set_defaults(run=lambda args: print(APP_DIR) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lnnode", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    adders = (
        _add_synth,
        _add_import,
        _add_train,
        _add_evaluate,
        _add_infer,
        _add_score,
        _add_export,
        _add_demo_weights,
        _add_mine_negatives,
        _add_rollback,
        _add_app_dir,
    )
    for add in adders:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError) as e:  # our errors say what is wrong: no traceback for the user
        print(f"lnnode {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
