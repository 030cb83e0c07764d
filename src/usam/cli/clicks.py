"""``usam next-click`` and ``usam evaluate-clicks``: propose the next click; score strategies with a simulated user."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from usam.cli.common import add_model_options, parse_pair, prepare_output_folder
from usam.errors import UsamError
from usam.uses.next_click import DEFAULT_THRESHOLD, AnswerMask, ClickStrategy, check_threshold

OUTPUT_SUFFIX = ".next-click"
"""``usam next-click`` writes ``<stem>.next-click.json`` and ``.png``: never the image's own name."""


def _add_choice_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--choose",
        choices=AnswerMask.values(),
        default=str(AnswerMask.HEADS),
        help="which of SAM's three masks answers a single click: the highest IoU predicted by usam's iou_<size> head "
        "of the model (heads) or SAM's own pick (sam); default %(default)s",
    )


def add_next_click(subparsers: Any) -> None:
    """Add the ``next-click`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "next-click",
        help="say whether another click would help (predicted prompt gap) and propose where",
        description="Segment IMAGE from the clicks given, read the answer's predicted prompt gap (another click is "
        "needed when it exceeds --threshold) and propose where to click next. Writes DIR/<stem>.next-click.json "
        "(the proposal, the estimates, the answer as compressed COCO RLE) and DIR/<stem>.next-click.png.",
    )
    parser.add_argument("image", type=Path, help="image file")
    add_model_options(parser)
    parser.add_argument("--heads", type=Path, required=True, help="heads with prompt_gap (and iou_<size>)")
    parser.add_argument("--point", type=parse_pair, action="append", default=[], metavar="X,Y", help="positive click")
    parser.add_argument(
        "--negative-point", type=parse_pair, action="append", default=[], metavar="X,Y", help="negative click"
    )
    parser.add_argument(
        "--strategy",
        choices=[str(strategy) for strategy in ClickStrategy if not strategy.needs_truth],
        default=str(ClickStrategy.UNCERTAIN_REGION),
        help="where to propose the click (see the README); default %(default)s",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        metavar="TAU",
        help="another click is needed when the predicted prompt gap exceeds TAU, in [-0.5, 0.5]; default %(default)s",
    )
    _add_choice_option(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if needed)")
    parser.set_defaults(handler=_run_next_click)


def _run_next_click(args: argparse.Namespace) -> int:
    from usam.cli.predict import refuse_to_overwrite_inputs
    from usam.files import write_json_atomically
    from usam.heads import load_heads
    from usam.images import load_image
    from usam.model_card import ModelCard, resolve_model
    from usam.outputs import encode_rle
    from usam.predictor import UncertainSAM
    from usam.uses.next_click import propose_next_click

    threshold = check_threshold(args.threshold, "--threshold")
    if not args.point:
        raise UsamError("no click given: pass at least one --point X,Y (the object's first click is positive)")
    json_path, png_path = (
        args.out / f"{args.image.stem}{OUTPUT_SUFFIX}.json",
        args.out / f"{args.image.stem}{OUTPUT_SUFFIX}.png",
    )
    model_spec = resolve_model(args.model)
    card = model_spec.source if isinstance(model_spec, ModelCard) else None
    refuse_to_overwrite_inputs([json_path, png_path], [args.image, args.heads, args.checkpoint, card])
    image = load_image(args.image)
    prepare_output_folder(args.out)
    heads = load_heads(args.heads)
    model = UncertainSAM.from_pretrained(
        model_spec, heads, checkpoint=args.checkpoint, device=args.device, hydra_overrides=args.hydra_override
    )
    coords = np.asarray(list(args.point) + list(args.negative_point), dtype=np.float32)
    labels = np.asarray([1] * len(args.point) + [0] * len(args.negative_point))
    model.set_image(image)
    proposal = propose_next_click(
        model, coords, labels, strategy=args.strategy, threshold=threshold, mask_choice=args.choose
    )
    mask = proposal.prediction.masks[proposal.mask_index]
    x, y = (int(value) for value in proposal.point)
    record = {
        "format": "usam-next-click",
        "version": 1,
        "image": str(args.image),
        "model": args.model,
        "heads": str(args.heads),
        "clicks": [[float(cx), float(cy), int(label)] for (cx, cy), label in zip(coords, labels, strict=True)],
        "strategy": str(proposal.strategy),
        "next_click": [x, y],
        "needed": proposal.needed,
        "prompt_gap": proposal.prompt_gap,
        "threshold": proposal.threshold,
        "mask_index": proposal.mask_index,
        "uncertainty": {
            name: float(values[proposal.mask_index]) for name, values in proposal.prediction.uncertainty.items()
        },
        "mask": encode_rle(mask),
    }
    write_json_atomically(record, json_path)
    _write_figure(image, mask, proposal, coords, labels, png_path)
    verdict = "exceeds" if proposal.needed else "does not exceed"
    advice = "another click should help" if proposal.needed else "no further click is needed (proposed anyway)"
    print(
        f"next click at ({x}, {y}) ({proposal.strategy}); predicted prompt gap {proposal.prompt_gap:+.3f} {verdict} "
        f"τ = {proposal.threshold:+.3f}: {advice}"
    )
    print(f"wrote {json_path} and {png_path}")
    return 0


def _write_figure(image, mask, proposal, coords, labels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from usam.files import atomic_path
    from usam.uses.next_click import mask_uncertainty_map

    figure, (overlay_axis, map_axis) = plt.subplots(1, 2, figsize=(11, 5))
    overlay_axis.imshow(image)
    tint = np.zeros((*mask.shape, 4), dtype=np.float32)
    tint[mask] = (0.12, 0.47, 1.0, 0.45)
    overlay_axis.imshow(tint)
    uncertainty = mask_uncertainty_map(proposal.prediction, (proposal.mask_index,))
    map_axis.imshow(uncertainty, cmap="magma", vmin=0.0, vmax=1.0)
    for axis in (overlay_axis, map_axis):
        positive, negative = coords[labels == 1], coords[labels == 0]
        axis.scatter(positive[:, 0], positive[:, 1], marker="*", s=150, c="#22dd44", edgecolors="white")
        axis.scatter(negative[:, 0], negative[:, 1], marker="X", s=100, c="#ee2222", edgecolors="white")
        axis.scatter(
            [proposal.point[0]],
            [proposal.point[1]],
            marker="o",
            s=220,
            facecolors="none",
            edgecolors="#ffdd00",
            linewidths=2.5,
        )
        axis.set_xticks([])
        axis.set_yticks([])
    overlay_axis.set_title(f"answer (mask {proposal.mask_index}) and next click ({proposal.strategy})")
    needed = "needed" if proposal.needed else "not needed"
    map_axis.set_title(
        f"per-pixel entropy; prompt gap {proposal.prompt_gap:+.3f} vs τ {proposal.threshold:+.2f}: {needed}"
    )
    figure.tight_layout()
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=100, format="png")
    finally:
        plt.close(figure)


def add_evaluate_clicks(subparsers: Any) -> None:
    """Add the ``evaluate-clicks`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "evaluate-clicks",
        help="score next-click strategies with a simulated user: NoC@85/90, mIoU after 1-5 clicks, ask when needed",
        description="On a folder dataset (images/<name>.*, masks/<name>/<object>.png; the test-bed's scenes are one), "
        "a simulated user starts each object with its centre click and adds, each round, the click a strategy "
        "proposes, positive inside the true object, else negative. Writes DIR/clicks.json, DIR/clicks.md and "
        "DIR/clicks.png; an interrupted run resumes from DIR/clicks.records.json.",
    )
    parser.add_argument("--data", type=Path, required=True, metavar="FOLDER", help="folder dataset")
    parser.add_argument("--split", default="all", help="split of the folder dataset (default %(default)s)")
    add_model_options(parser)
    parser.add_argument("--heads", type=Path, required=True, help="heads with prompt_gap (and iou_<size>)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--max-clicks", type=int, default=20, help="clicks per object (default %(default)s)")
    parser.add_argument(
        "--gate-clicks", type=int, default=5, help="most clicks when asking only when needed (default %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random clicks and the bootstrap (default %(default)s)"
    )
    parser.add_argument("--limit", type=int, help="use only the first N images")
    parser.add_argument(
        "--strategies",
        nargs="+",
        choices=ClickStrategy.values(),
        default=ClickStrategy.values(),
        help="strategies to run (default: all)",
    )
    _add_choice_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    parser.set_defaults(handler=_run_evaluate_clicks)


def _run_evaluate_clicks(args: argparse.Namespace) -> int:
    from usam.datasets import open_dataset
    from usam.heads import load_heads
    from usam.model_card import resolve_model
    from usam.predictor import UncertainSAM
    from usam.uses.click_report import write_click_report
    from usam.uses.simulated_user import SimulationOptions, run_click_simulation, summarize_runs
    from usam.validation import check_int

    options = SimulationOptions(
        max_clicks=args.max_clicks, seed=args.seed, strategies=tuple(args.strategies), mask_choice=args.choose
    )
    check_int(args.gate_clicks, "--gate-clicks", minimum=1, maximum=args.max_clicks)
    model_spec = resolve_model(args.model)
    reader = open_dataset("folder", args.data, args.split, limit=args.limit)
    prepare_output_folder(args.out)
    heads = load_heads(args.heads)
    model = UncertainSAM.from_pretrained(
        model_spec, heads, checkpoint=args.checkpoint, device=args.device, hydra_overrides=args.hydra_override
    )
    runs = run_click_simulation(
        model, reader, options, records_path=args.out / "clicks.records.json", progress=not args.no_progress
    )
    results = summarize_runs(runs, gate_clicks=args.gate_clicks, seed=args.seed)
    context = {"model": args.model, "heads": str(args.heads), "data": str(args.data), "split": args.split}
    paths = write_click_report(results, options.as_record(), args.out, context)
    for name, summary in results.items():
        print(
            f"{name}: NoC@85 {summary['noc']['85']['mean']:.2f}, NoC@90 {summary['noc']['90']['mean']:.2f}, "
            f"mIoU@1..5 " + " ".join(f"{entry['mean']:.3f}" for entry in summary["miou"].values())
        )
    print(f"wrote {paths['json']}, {paths['markdown']} and {paths['figure']}")
    return 0
