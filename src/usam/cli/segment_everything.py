"""``usam segment-everything`` and ``usam evaluate-automatic``: SAM2's automatic masks with usam's estimates."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from usam.cli.common import add_model_options, note, prepare_output_folder

OUTPUT_SUFFIX = ".usam-masks"
"""Outputs are named ``<stem>.usam-masks.json`` and ``<stem>.usam-masks.png``."""


def _add_generator_options(parser: argparse.ArgumentParser) -> None:
    from usam.automatic import RankBy

    add_model_options(parser)
    parser.add_argument("--heads", type=Path, help="heads file (.safetensors) or the authors' released heads folder")
    parser.add_argument("--points-per-side", type=int, default=32, help="grid of N x N points (default %(default)s)")
    parser.add_argument("--points-per-batch", type=int, default=64, help="points per decoder call (%(default)s)")
    parser.add_argument(
        "--pred-iou-thresh", type=float, default=0.8, help="SAM's score threshold, 0 = off (default %(default)s)"
    )
    parser.add_argument(
        "--stability-score-thresh", type=float, default=0.95, help="stability threshold, 0 = off (default %(default)s)"
    )
    parser.add_argument("--box-nms-thresh", type=float, default=0.7, help="box NMS IoU (default %(default)s)")
    parser.add_argument("--crop-n-layers", type=int, default=0, help="crop layers (default %(default)s)")
    parser.add_argument(
        "--min-predicted-iou",
        type=float,
        help="drop masks whose predicted IoU (usam's) is below this, beside SAM's thresholds (set those to 0 to use "
        "it in their place)",
    )
    parser.add_argument(
        "--min-iou-lower", type=float, help="drop masks whose conformal IoU lower bound is below this (calibrated)"
    )
    parser.add_argument("--iou-head", help="the IoU head behind the predicted IoU (default: the model's size head)")
    parser.add_argument(
        "--rank-by", choices=RankBy.values(), default=str(RankBy.SAM_SCORE), help="order of masks (default %(default)s)"
    )


def _make_generator(args: argparse.Namespace) -> Any:
    from usam.automatic import UncertainMaskGenerator
    from usam.heads import load_heads

    heads = load_heads(args.heads) if args.heads is not None else None
    return UncertainMaskGenerator.from_pretrained(
        args.model,
        heads,
        checkpoint=args.checkpoint,
        device=args.device,
        hydra_overrides=args.hydra_override,
        iou_head=args.iou_head,
        min_predicted_iou=args.min_predicted_iou,
        min_iou_lower=args.min_iou_lower,
        rank_by=args.rank_by,
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers,
    )


def _options_record(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "points_per_side",
        "points_per_batch",
        "pred_iou_thresh",
        "stability_score_thresh",
        "box_nms_thresh",
        "crop_n_layers",
        "min_predicted_iou",
        "min_iou_lower",
        "rank_by",
    )
    return {
        "model": args.model,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "heads": str(args.heads) if args.heads else None,
        "options": {name: getattr(args, name) for name in names},
    }


def add_segment_everything(subparsers: Any) -> None:
    """Add the ``segment-everything`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "segment-everything",
        help="SAM2's automatic masks of an image, each with usam's estimates",
        description="Prompt a grid of points with SAM2's automatic mask generator and write DIR/<stem>.usam-masks.json "
        "(COCO results: per mask the compressed RLE, bbox, area, score by --rank-by, SAM's score, the stability score, "
        "usam's predicted IoU, entropy and every head's estimate) and DIR/<stem>.usam-masks.png (each mask coloured "
        "by its predicted IoU, with a colour bar). Existing files of those names are replaced.",
    )
    parser.add_argument("image", type=Path, help="image file (RGB, grayscale, RGBA or 16-bit)")
    _add_generator_options(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created; checked first)")
    parser.add_argument("--image-id", type=int, default=1, help="image_id of the COCO results (default %(default)s)")
    parser.add_argument("--category-id", type=int, default=1, help="their category_id (default %(default)s)")
    parser.set_defaults(handler=_run_segment_everything)


def _run_segment_everything(args: argparse.Namespace) -> int:
    import numpy as np

    from usam.automatic import PREDICTED_IOU_KEY, rank_key
    from usam.cli.predict import refuse_to_overwrite_inputs
    from usam.files import write_json_atomically
    from usam.images import load_image
    from usam.outputs import AUTOMATIC_FORMAT, AUTOMATIC_FORMAT_VERSION, automatic_mask_results
    from usam.visualize import render_automatic_masks

    stem = args.image.stem + OUTPUT_SUFFIX
    json_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.png"
    refuse_to_overwrite_inputs([json_path, png_path], [args.image, args.heads, args.checkpoint])
    image = load_image(args.image)
    prepare_output_folder(args.out)
    if args.heads is None:
        note("no --heads given; masks are coloured by SAM's score and carry only the entropy")
    generator = _make_generator(args)
    records = generator.generate(image)
    results = automatic_mask_results(
        records, image_id=args.image_id, score_key=rank_key(args.rank_by), category_id=args.category_id
    )
    write_json_atomically(
        {
            "format": AUTOMATIC_FORMAT,
            "format_version": AUTOMATIC_FORMAT_VERSION,
            "image": str(args.image),
            **_options_record(args),
            "iou_head": generator.iou_head,
            "image_size": [int(image.shape[0]), int(image.shape[1])],
            "annotations": results,
        },
        json_path,
    )
    colour_key, label = (
        (PREDICTED_IOU_KEY, f"predicted IoU ({generator.iou_head})")
        if generator.iou_head is not None
        else ("predicted_iou", "SAM's score")
    )
    render_automatic_masks(
        image,
        [record["segmentation"] for record in records],
        [record[colour_key] for record in records],
        png_path,
        value_label=label,
        points=np.asarray([record["point_coords"][0] for record in records]).reshape(-1, 2),
        title=f"{args.image.name} - {args.model}",
    )
    print(f"{len(records)} masks; wrote {json_path} and {png_path}")
    return 0


def add_evaluate_automatic(subparsers: Any) -> None:
    """Add the ``evaluate-automatic`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "evaluate-automatic",
        help="COCO mask AP of automatic masks on a folder dataset, ranked by SAM's score, stability, usam's IoU",
        description="Run the automatic mask generator on every image of a dataset in usam's folder layout "
        "(images/, masks/<image>/<object>.png) and score its masks against the objects with COCO mask AP "
        "(pycocotools), ranking the same masks by SAM's score, by the stability score and by usam's predicted IoU. "
        "Writes DIR/automatic_ap.json and DIR/automatic_ap.md.",
    )
    parser.add_argument("--data", type=Path, required=True, metavar="FOLDER", help="dataset in usam's folder layout")
    parser.add_argument("--split", default="test", help="split name recorded with the samples (default %(default)s)")
    parser.add_argument("--limit", type=int, help="evaluate the first N images only")
    _add_generator_options(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created; checked first)")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    parser.set_defaults(handler=_run_evaluate_automatic)


def _run_evaluate_automatic(args: argparse.Namespace) -> int:
    from usam.datasets import open_dataset
    from usam.errors import UsamError
    from usam.evaluation.automatic import ap_table, run_automatic_evaluation

    if args.heads is None:
        raise UsamError("evaluate-automatic ranks by usam's predicted IoU and needs --heads")
    options = {"limit": args.limit} if args.limit is not None else {}
    reader = open_dataset("folder", args.data, args.split, **options)
    prepare_output_folder(args.out)
    generator = _make_generator(args)
    results = run_automatic_evaluation(
        reader,
        generator,
        args.out,
        progress=not args.no_progress,
        context={"data": str(args.data), **_options_record(args), "iou_head": generator.iou_head},
    )
    print(ap_table(results))
    print(f"wrote {args.out / 'automatic_ap.json'} and {args.out / 'automatic_ap.md'}")
    return 0
