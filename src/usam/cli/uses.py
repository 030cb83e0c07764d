"""``usam evaluate-uses`` and ``usam pseudo-labels``: the uses of usam's estimates from the command line.

The cascade and the right mask are options of ``usam predict`` (``--cascade``, ``--escalate``; the ``usam_pick``
and ``show_all_masks`` fields of its JSON).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from usam.cli.common import add_model_options, prepare_output_folder


def add_evaluate_uses(subparsers: Any) -> None:
    """Add the ``evaluate-uses`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate-uses",
        help="evaluate the model cascade, mask choice and pseudo-label filter on a token store",
        description="Score three uses of usam's estimates on a token store: the model cascade (mean IoU against the "
        "fraction escalated, relative AUC vs the oracle), the right mask (mean IoU of usam's pick, SAM's pick, best "
        "of three; precision and recall of the task-gap flag) and the pseudo-label filter (precision against the "
        "fraction kept). Writes DIR/uses.md, DIR/uses.json and PNG curves, with 95 %% bootstrap intervals.",
    )
    parser.add_argument("--data", type=Path, required=True, metavar="STORE", help="token store folder (usam extract)")
    parser.add_argument("--heads", type=Path, required=True, help="heads file (usam train)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--small", default="tiny", help="small model: a size or a model name (default %(default)s)")
    parser.add_argument("--large", help="large model (default: the large model of the small one's family)")
    parser.add_argument("--seeds", type=int, default=10, help="random orders for the random baseline (default 10)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    parser.set_defaults(handler=_run_evaluate_uses)


def _run_evaluate_uses(args: argparse.Namespace) -> int:
    from usam.evaluation.uses import evaluate_uses
    from usam.evaluation.uses_report import write_uses_report

    prepare_output_folder(args.out)
    result = evaluate_uses(
        args.data, args.heads, small=args.small, large=args.large, seeds=args.seeds, resamples=args.resamples
    )
    files = write_uses_report(result, args.out)
    print(f"evaluated {result.num_objects} objects ({result.small} -> {result.large}); wrote {', '.join(files)}")
    return 0


def add_pseudo_labels(subparsers: Any) -> None:
    """Add the ``pseudo-labels`` subcommand."""
    parser = subparsers.add_parser(
        "pseudo-labels",
        help="segment a folder of images from prompts and keep the trusted masks as a COCO dataset",
        description='Segment every object of a prompts file (JSON: {"images": [{"file": NAME, "id": N, '
        '"objects": [{"points": [[X, Y]], "negative_points": [...], "box": [X0, Y0, X1, Y1], '
        '"category_id": N}]}]}), pick each object\'s mask by predicted IoU and keep it when its confidence (the '
        "conformal lower bound of calibrated heads, else the predicted IoU) reaches --threshold. Writes OUT as a "
        "COCO dataset with RLE masks and every estimate in each annotation's 'usam' field; an interrupted run "
        "resumes.",
    )
    parser.add_argument("images", type=Path, help="folder the prompts file's image names are relative to")
    parser.add_argument("--prompts", type=Path, required=True, help="prompts file (JSON, see above)")
    add_model_options(parser)
    parser.add_argument("--heads", type=Path, required=True, help="heads file with the model's IoU head")
    parser.add_argument("--threshold", type=float, default=0.75, help="confidence to keep a mask (default 0.75)")
    parser.add_argument(
        "--keep-by",
        choices=["auto", "predicted-iou", "lower-bound"],
        default="auto",
        help="which confidence must pass (default %(default)s: the lower bound when the heads give one)",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the COCO JSON to write")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    parser.set_defaults(handler=_run_pseudo_labels)


def _run_pseudo_labels(args: argparse.Namespace) -> int:
    from usam.heads import load_heads
    from usam.model_card import resolve_model
    from usam.predictor import UncertainSAM
    from usam.uses import PseudoLabelFilter, read_prompts, write_pseudo_labels
    from usam.uses.requirements import own_iou_head

    keep = PseudoLabelFilter(args.threshold, args.keep_by)  # a bad threshold fails before any work
    read_prompts(args.prompts)
    prepare_output_folder(args.out.parent, "folder of --out")
    spec = resolve_model(args.model)
    heads = load_heads(args.heads)
    model = UncertainSAM.from_pretrained(
        spec, heads, checkpoint=args.checkpoint, device=args.device, hydra_overrides=args.hydra_override
    )
    own_iou_head(model, "keeping pseudo-labels")
    summary = write_pseudo_labels(
        model,
        args.images,
        args.prompts,
        args.out,
        keep,
        progress=not args.no_progress,
        context={"model": args.model, "heads": str(args.heads)},
    )
    print(f"kept {summary.kept} of {summary.objects} objects in {summary.images} images; wrote {summary.path}")
    return 0
