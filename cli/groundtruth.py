"""`stagewatch eval` and `stagewatch gt`: ground-truth commands.

    stagewatch eval coco GT.json DETECTIONS.json [--iou-type bbox|segm] [--json]
    stagewatch eval --run RUN_ID [--dataset DATASET.yaml] [--json]
    stagewatch gt validate DATASET.yaml [--json]

Exit codes: 0 fine, 1 not found (unknown run) or invalid labels (gt validate), 2 bad input
(a malformed file, a dataset that does not load).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from stagewatch.cli._options import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, fail, home_of, home_options, progress
from stagewatch.cli._report import format_accuracy


def add_commands(commands: Any) -> None:
    evaluate = commands.add_parser("eval", help="COCO evaluation of files, or a finished run's accuracy again")
    home_options(evaluate, endpoint=False)
    evaluate.add_argument("--run", help="a run id (or unique prefix) to judge again from the event log")
    evaluate.add_argument("--dataset", help="the golden dataset (default: the one the run started with)")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(handler=cmd_eval_run)
    kinds = evaluate.add_subparsers(dest="kind")
    coco = kinds.add_parser("coco", help="the 12 COCO numbers of a results file against its ground truth")
    coco.add_argument("ground_truth", type=Path, help="COCO annotations (JSON)")
    coco.add_argument("detections", type=Path, help="COCO results: a JSON list of {image_id, category_id, bbox, score}")
    coco.add_argument("--iou-type", choices=["bbox", "segm"], default="bbox")
    coco.add_argument("--json", action="store_true", help="print {AP, AP50, ..., ARl} as JSON")
    coco.set_defaults(handler=cmd_eval_coco)

    gt = commands.add_parser("gt", help="golden datasets")
    actions = gt.add_subparsers(dest="action", required=True)
    validate = actions.add_parser("validate", help="read every label: formats, missing and invalid labels")
    validate.add_argument("dataset", type=Path, help="the dataset file (YAML or JSON)")
    validate.add_argument("--json", action="store_true", help="print JSON")
    validate.set_defaults(handler=cmd_gt_validate)


def cmd_eval_coco(args: argparse.Namespace) -> int:
    from stagewatch.daemon.groundtruth.coco import STAT_NAMES, CocoFormatError, evaluate_coco, parse_coco_detections
    from stagewatch.daemon.groundtruth.formats import LabelError, load_coco

    try:
        ground_truth = load_coco(args.ground_truth, args.iou_type)
        detections = parse_coco_detections(
            _read_json(args.detections), ground_truth, str(args.detections), args.iou_type
        )
    except (LabelError, CocoFormatError, ValueError) as error:
        return fail(str(error), EXIT_USAGE)
    with progress(args, "evaluating", "images") as update:
        stats = evaluate_coco(ground_truth, detections, args.iou_type, progress=update)
    if args.json:
        print(json.dumps(stats, indent=1))
        return EXIT_OK
    for line, name in zip(_COCO_LINES, STAT_NAMES, strict=True):
        print(f" {line} = {stats[name]:0.3f}")
    return EXIT_OK


# The layout pycocotools' summarize() prints, so people can compare by eye.
_COCO_LINES = [
    f"Average {kind:<9} ({short}) @[ IoU={iou:<9} | area={area:>6s} | maxDets={dets:>3d} ]"
    for kind, short, iou, area, dets in [
        ("Precision", "AP", "0.50:0.95", "all", 100),
        ("Precision", "AP", "0.50", "all", 100),
        ("Precision", "AP", "0.75", "all", 100),
        ("Precision", "AP", "0.50:0.95", "small", 100),
        ("Precision", "AP", "0.50:0.95", "medium", 100),
        ("Precision", "AP", "0.50:0.95", "large", 100),
        ("Recall", "AR", "0.50:0.95", "all", 1),
        ("Recall", "AR", "0.50:0.95", "all", 10),
        ("Recall", "AR", "0.50:0.95", "all", 100),
        ("Recall", "AR", "0.50:0.95", "small", 100),
        ("Recall", "AR", "0.50:0.95", "medium", 100),
        ("Recall", "AR", "0.50:0.95", "large", 100),
    ]
]


def _read_json(path: Path) -> Any:
    from stagewatch.daemon.groundtruth.formats import LabelError, regular_file

    try:
        return json.loads(regular_file(path).read_bytes())
    except LabelError as error:  # not a regular file, too big: the message names the path
        raise ValueError(str(error)) from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deep to be COCO results") from None
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def cmd_eval_run(args: argparse.Namespace) -> int:
    from stagewatch.daemon.accuracy._accuracy import fold_log
    from stagewatch.daemon.groundtruth.spec import DatasetError, load_dataset
    from stagewatch.daemon.query._readmodels import RunNotFound, load_audit_head, resolve_run_id

    if not args.run:
        return fail("give --run RUN_ID (or: stagewatch eval coco GT.json DETECTIONS.json)", EXIT_USAGE)
    home = home_of(args).root
    try:
        run_id = resolve_run_id(home, args.run)
    except RunNotFound as error:
        return fail(str(error), EXIT_NOT_FOUND)
    dataset_path = args.dataset or load_audit_head(home, run_id).get("dataset")
    if not dataset_path:
        return fail(f"run {run_id} started without a golden dataset; give --dataset", EXIT_USAGE)
    try:
        load_dataset(dataset_path)
    except DatasetError as error:
        return fail(str(error), EXIT_USAGE)
    run = fold_log(home, {run_id}, dataset=str(Path(dataset_path).absolute())).runs.get(run_id)
    if run is None:
        return fail(f"run {run_id} has no run_started event in the log (removed by retention?)", EXIT_NOT_FOUND)
    summary = run.summary()
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"run {run_id} against {summary['dataset']}:")
        print(format_accuracy(summary))
    return EXIT_OK


def cmd_gt_validate(args: argparse.Namespace) -> int:
    from stagewatch.daemon.groundtruth.spec import DatasetError, load_dataset, validate_dataset

    try:
        with progress(args, "reading labels", "labels") as update:
            report = validate_dataset(load_dataset(args.dataset), progress=update)
    except DatasetError as error:
        return fail(str(error), EXIT_USAGE)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print_validation(report)
    return EXIT_OK if report["ok"] else EXIT_NOT_FOUND


def _print_validation(report: dict[str, Any]) -> None:
    print(f"dataset {report['dataset']}: {report['samples']} samples ({report['file']})")
    for stage, found in report["stages"].items():
        formats = ", ".join(f"{count} {suffix}" for suffix, count in sorted(found["formats"].items())) or "none"
        print(
            f"  {stage:<20} {found['kind']:<13} labeled {found['labeled']:>5} ({formats}), "
            f"missing {len(found['missing'])}, invalid {len(found['invalid'])}"
        )
        for problem in found["invalid"][:10]:
            print(f"    invalid {problem['sample_id']}: {problem['error']}")
        for note, files in found["notes"].items():
            print(f"    note: {note} in {files} file(s)")
        if found["missing"]:
            shown = ", ".join(found["missing"][:5]) + (" ..." if len(found["missing"]) > 5 else "")
            print(f"    missing (unlabeled): {shown}")
    inputs = report.get("inputs")
    if inputs is not None:
        print(f"  input images: {inputs['found']} found, {len(inputs['missing'])} missing")
        for problem in inputs["refused"][:10]:
            print(f"    refused {problem['sample_id']}: {problem['error']}")
    print("ok" if report["ok"] else "invalid labels found")
