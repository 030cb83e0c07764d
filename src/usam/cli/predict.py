"""``usam predict`` and ``usam selfcheck``: segment one image and write the estimates as JSON and a figure."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usam.cli.common import add_model_options, parse_box, parse_pair
from usam.errors import UsamError

SELF_CHECK_WARNING = "self-check with RANDOM weights: the numbers are meaningless; they only show that usam runs"


def add_predict(subparsers: Any) -> None:
    """Add the ``predict`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "predict",
        help="segment an image with SAM2 and estimate the uncertainty of each mask",
        description="Segment IMAGE from point/box prompts and write DIR/<stem>.json (one entry per mask: SAM score, "
        "entropy, area, the heads' estimates, the mask as RLE) and DIR/<stem>.png (mask, uncertainty map, estimates "
        "in words).",
    )
    parser.add_argument("image", type=Path, help="image file (RGB, grayscale, RGBA or 16-bit)")
    add_model_options(parser)
    parser.add_argument("--heads", type=Path, help="heads file (.safetensors) or the authors' released heads folder")
    parser.add_argument(
        "--point",
        type=parse_pair,
        action="append",
        default=[],
        metavar="X,Y",
        help="foreground click in pixels (repeatable)",
    )
    parser.add_argument(
        "--negative-point",
        type=parse_pair,
        action="append",
        default=[],
        metavar="X,Y",
        help="background click (repeatable)",
    )
    parser.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="box prompt in pixels")
    parser.add_argument("--single-mask", action="store_true", help="ask SAM2 for one mask instead of three")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from usam.heads import load_heads
    from usam.images import load_image

    image = load_image(args.image)
    if not args.point and not args.negative_point and args.box is None:
        raise UsamError("no prompt given: pass --point X,Y (repeatable) and/or --box X0,Y0,X1,Y1")
    heads = load_heads(args.heads) if args.heads is not None else None
    if heads is None:
        print("usam: note: no --heads given; only SAM's score and the entropy are reported", file=sys.stderr)
    from usam.predictor import UncertainSAM

    model = UncertainSAM.from_pretrained(
        args.model, heads, checkpoint=args.checkpoint, device=args.device, hydra_overrides=args.hydra_override
    )
    _predict_and_write(
        model,
        image,
        args.out,
        args.image.stem,
        points=args.point,
        negative_points=args.negative_point,
        box=args.box,
        multimask_output=not args.single_mask,
        context={
            "image": str(args.image),
            "model": args.model,
            "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "heads": str(args.heads) if args.heads else None,
        },
    )
    return 0


def _predict_and_write(
    model: Any,
    image: np.ndarray,
    out: Path,
    stem: str,
    *,
    points: Sequence[tuple[float, float]],
    negative_points: Sequence[tuple[float, float]],
    box: tuple[float, float, float, float] | None,
    multimask_output: bool,
    context: dict[str, Any],
    footnote: str | None = None,
) -> tuple[Path, Path]:
    from usam.head_table import is_gap_head
    from usam.outputs import prediction_record, write_json_atomically
    from usam.visualize import render_prediction

    all_points = list(points) + list(negative_points)
    coords = np.asarray(all_points, dtype=np.float32).reshape(-1, 2) if all_points else None
    labels = np.asarray([1] * len(points) + [0] * len(negative_points), dtype=np.int32) if all_points else None
    model.set_image(image)
    result = model.predict(
        point_coords=coords,
        point_labels=labels,
        box=np.asarray(box, dtype=np.float32) if box is not None else None,
        multimask_output=multimask_output,
    )
    heads = model.heads
    record = prediction_record(
        result,
        **context,
        prompt={
            "points": [list(point) for point in points],
            "negative_points": [list(point) for point in negative_points],
            "box": list(box) if box is not None else None,
        },
        multimask_output=multimask_output,
        heads_pairing=heads.metadata.pairing if heads is not None else None,
        heads_sam2_version=heads.metadata.sam2_version if heads is not None else None,
    )
    json_path = write_json_atomically(record, out / f"{stem}.json")
    png_path = render_prediction(
        image,
        result,
        out / f"{stem}.png",
        points=coords,
        point_labels=labels,
        box=box,
        title=f"{stem} - {context.get('model', '')}",
        footnote=footnote,
    )
    for entry in record["masks"]:
        summary = ", ".join(
            f"{name} {value:+.3f}" if is_gap_head(name) else f"{name} {value:.3f}"
            for name, value in entry["uncertainty"].items()
        )
        print(
            f"mask {entry['index']}: SAM score {entry['sam_score']:.3f}, entropy {entry['entropy']:.3f}, "
            f"area {entry['area']} px" + (f"; {summary}" if summary else "")
        )
    print(f"wrote {json_path} and {png_path}")
    return json_path, png_path


def add_selfcheck(subparsers: Any) -> None:
    """Add the ``selfcheck`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "selfcheck",
        help="verify the installation offline on a randomly initialised model",
        description="Run the whole path (image, SAM2, token hooks, nine heads, entropy, JSON and PNG) offline on a "
        "randomly initialised SAM2 and random heads. The numbers are meaningless; the check only shows that usam "
        "works on this machine.",
    )
    parser.add_argument("--out", type=Path, help="where to write the example outputs (default: a temporary folder)")
    parser.add_argument("--image", type=Path, help="image to use (default: the bundled example)")
    parser.add_argument("--model", default="sam2.1-tiny", help="SAM2 config to build with random weights")
    parser.add_argument("--image-size", type=int, default=1024, help="SAM2 input size (smaller is faster)")
    parser.add_argument("--device", help="torch device (default: CUDA if available, else CPU)")
    parser.set_defaults(handler=_run_selfcheck)


def _run_selfcheck(args: argparse.Namespace) -> int:
    from importlib import resources

    from usam import sam2_adapter
    from usam.head_table import HEAD_NAMES
    from usam.heads import random_heads
    from usam.images import load_image
    from usam.models import get_model_spec
    from usam.predictor import UncertainSAM

    started = time.perf_counter()
    spec = get_model_spec(args.model)
    image_path = args.image or Path(str(resources.files("usam") / "assets" / "example.jpg"))
    image = load_image(image_path)
    overrides = (
        [] if args.image_size == 1024 else sam2_adapter.small_model_overrides(args.image_size, small_trunk=False)
    )
    sam_model = sam2_adapter.build_sam2_model(spec, device=args.device, random_weights=True, hydra_overrides=overrides)
    predictor = sam2_adapter.make_image_predictor(sam_model)
    model = UncertainSAM(predictor, random_heads(HEAD_NAMES, sam2_version=spec.version))
    out = args.out or Path(tempfile.mkdtemp(prefix="usam-selfcheck-"))
    height, width = image.shape[:2]
    _predict_and_write(
        model,
        image,
        out,
        "selfcheck",
        points=[(width * 0.37, height * 0.6)],
        negative_points=[],
        box=None,
        multimask_output=True,
        context={
            "image": str(image_path),
            "model": f"{spec.name} (random weights)",
            "warning": SELF_CHECK_WARNING,
        },
        footnote=SELF_CHECK_WARNING,
    )
    leftover = list(sam2_adapter.iter_hooks(sam_model))
    if leftover:
        raise UsamError(f"self-check failed: hooks left on the SAM2 model: {leftover}")
    print(
        f"self-check passed in {time.perf_counter() - started:.1f} s ({spec.name} config, {args.image_size} px, "
        f"device {model.device})."
    )
    print(f"NOTE: {SELF_CHECK_WARNING}.")
    print(
        "With real weights: usam predict IMAGE --model sam2.1-tiny --heads HEADS --point X,Y --out DIR "
        "(the checkpoint downloads on first use, or pass --checkpoint FILE)."
    )
    return 0
