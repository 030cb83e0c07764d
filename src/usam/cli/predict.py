"""``usam predict`` and ``usam selfcheck``: segment one image and write the estimates as JSON and a figure."""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usam.calibration import DEFAULT_ALPHA, BoundKind
from usam.cli.common import add_model_options, note, parse_box, parse_pair, prepare_output_folder
from usam.errors import InvalidInputError, UsamError
from usam.validation import StrEnum

SELF_CHECK_WARNING = "self-check with RANDOM weights: the numbers are meaningless; they only show that usam runs"


class Backend(StrEnum):
    """The library that runs SAM2 for ``usam predict``."""

    SAM2 = "sam2"
    TRANSFORMERS = "transformers"


OUTPUT_SUFFIX = ".usam"
"""Outputs are named ``<stem>.usam.json`` and ``<stem>.usam.png``: they cannot be the input image's own name."""


def add_predict(subparsers: Any) -> None:
    """Add the ``predict`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "predict",
        help="segment an image with SAM2 and estimate the uncertainty of each mask",
        description="Segment IMAGE from point/box prompts and write DIR/<stem>.usam.json (per object, per mask: SAM "
        "score, entropy, area, the heads' estimates, the mask as compressed COCO RLE) and DIR/<stem>.usam.png (mask, "
        "uncertainty map, estimates in words). Prompts: the points and at most one box describe one object; "
        "several --box without points describe one object each (one batched call). Existing files of those names "
        "are replaced; the input image never is.",
    )
    parser.add_argument("image", type=Path, help="image file (RGB, grayscale, RGBA or 16-bit)")
    add_model_options(parser)
    parser.add_argument(
        "--backend",
        choices=Backend.values(),
        default=Backend.SAM2.value,
        help="run SAM2 with Meta's sam2 package (default) or Hugging Face transformers; with transformers, --model "
        "is a Hugging Face id (e.g. facebook/sam2.1-hiera-tiny) or a folder written by save_pretrained",
    )
    parser.add_argument("--heads", type=Path, help="heads file (.safetensors) or the authors' released heads folder")
    parser.add_argument(
        "--point",
        type=parse_pair,
        action="append",
        default=[],
        metavar="X,Y",
        help="foreground click in pixels (repeatable; all clicks describe one object)",
    )
    parser.add_argument(
        "--negative-point",
        type=parse_pair,
        action="append",
        default=[],
        metavar="X,Y",
        help="background click in pixels (repeatable)",
    )
    parser.add_argument(
        "--box",
        type=parse_box,
        action="append",
        default=[],
        metavar="X0,Y0,X1,Y1",
        help="box prompt in pixels; repeat it (without points) to segment several objects in one call",
    )
    parser.add_argument("--single-mask", action="store_true", help="ask SAM2 for one mask per object instead of three")
    parser.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help="with heads calibrated by `usam calibrate`: miscoverage of the IoU lower bound iou_lower written per "
        "mask; over masks, P(true IoU >= iou_lower) >= 1 - alpha (marginal, not per mask). Default %(default)s",
    )
    parser.add_argument(
        "--bound",
        choices=BoundKind.values(),
        default=str(BoundKind.MONDRIAN),
        help="conformal bound: per bin of the calibrated IoU (mondrian, tighter for easy masks) or one quantile "
        "for all masks (marginal); default %(default)s",
    )
    parser.add_argument(
        "--cascade",
        metavar="SMALL,LARGE",
        help="model cascade: predict with SMALL and escalate objects to LARGE by --escalate (both get --heads; "
        "replaces --model, not with --checkpoint)",
    )
    parser.add_argument(
        "--escalate",
        metavar="RULE:T",
        help="with --cascade: model-gap:T escalates when the predicted model gap exceeds T (needs the model_gap "
        "head), iou:T when SMALL's predicted IoU is below T (needs its iou_<size> head)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="output folder (created if needed; checked first)"
    )
    parser.add_argument(
        "--coco-results",
        type=Path,
        metavar="FILE",
        help="also write a COCO results file (a JSON list that pycocotools' COCO.loadRes reads): one entry per mask "
        "with image_id, category_id, segmentation, score (SAM's) and usam's estimates as extra fields",
    )
    parser.add_argument(
        "--image-id",
        type=int,
        help="image_id for --coco-results (default: the file stem if it is a number, as in COCO's file names, else 1)",
    )
    parser.add_argument(
        "--category-id", type=int, default=1, help="category_id for --coco-results (default %(default)s)"
    )
    parser.set_defaults(handler=_run_predict)


@dataclasses.dataclass
class Prompts:
    """The prompts of one ``usam predict`` call, as SAM2 arrays and as JSON-ready descriptions per object."""

    point_coords: np.ndarray | None
    point_labels: np.ndarray | None
    box: np.ndarray | None
    descriptions: list[dict[str, Any]]


def make_prompts(
    points: Sequence[tuple[float, float]],
    negative_points: Sequence[tuple[float, float]],
    boxes: Sequence[tuple[float, float, float, float]],
) -> Prompts:
    """Objects from the command line's prompts.

    Points (foreground and background) and at most one box describe one object; several boxes without points
    describe one object each and are predicted in one batched call.

    Raises:
        UsamError: No prompt at all, or points together with several boxes (which object would they belong to?).
    """
    if not points and not negative_points and not boxes:
        raise UsamError("no prompt given: pass --point X,Y (repeatable) and/or --box X0,Y0,X1,Y1")
    if len(boxes) > 1 and (points or negative_points):
        raise UsamError(
            f"{len(boxes)} --box prompts make {len(boxes)} objects, so the points cannot tell which object they "
            "belong to; give points with at most one --box, or run once per object"
        )
    clicks = list(points) + list(negative_points)
    coords = np.asarray(clicks, dtype=np.float32).reshape(-1, 2) if clicks else None
    labels = np.asarray([1] * len(points) + [0] * len(negative_points), dtype=np.int32) if clicks else None
    if len(boxes) > 1:
        descriptions = [{"points": [], "negative_points": [], "box": list(box)} for box in boxes]
        return Prompts(None, None, np.asarray(boxes, dtype=np.float32), descriptions)
    box = np.asarray(boxes[0], dtype=np.float32) if boxes else None
    description = {
        "points": [list(point) for point in points],
        "negative_points": [list(point) for point in negative_points],
        "box": list(boxes[0]) if boxes else None,
    }
    return Prompts(coords, labels, box, [description])


def output_paths(out: Path, stem: str) -> tuple[Path, Path]:
    """The JSON and PNG that ``usam predict`` writes for an image named ``<stem>.*``."""
    return out / f"{stem}{OUTPUT_SUFFIX}.json", out / f"{stem}{OUTPUT_SUFFIX}.png"


def refuse_to_overwrite_inputs(outputs: Sequence[Path], inputs: Sequence[Path | None]) -> None:
    """Fail if an output path names an input file (same file, also through links), before anything runs.

    Raises:
        UsamError: Naming the output and the input it would replace.
    """
    for output in outputs:
        if not output.exists():
            continue
        for source in inputs:
            if source is not None and source.exists() and os.path.samefile(output, source):
                raise UsamError(
                    f"refusing to write {output}: it is the input {source}; choose another --out folder or file name"
                )


def _coco_image_id(image: Path, given: int | None) -> int:
    if given is not None:
        return given
    return int(image.stem) if image.stem.isdigit() else 1


def _run_predict(args: argparse.Namespace) -> int:
    from usam.calibration import ALPHA_GRID, alpha_index
    from usam.heads import load_heads
    from usam.images import load_image

    prompts = make_prompts(args.point, args.negative_point, args.box)
    escalation = _cascade_request(args)
    json_path, png_path = output_paths(args.out, args.image.stem)
    outputs = [json_path, png_path] + ([args.coco_results] if args.coco_results is not None else [])
    from usam.model_card import ModelCard, resolve_model

    transformers_backend = args.backend == Backend.TRANSFORMERS
    if transformers_backend:
        if escalation is not None:
            raise InvalidInputError(
                "--cascade runs SAM2-package models; it cannot be combined with --backend transformers"
            )
        _check_transformers_model_options(args)
        specs = []
    else:
        names = args.cascade.split(",") if escalation is not None else [args.model]
        specs = [resolve_model(name.strip()) for name in names]  # a bad name or card fails before any work
    cards = [spec.source for spec in specs if isinstance(spec, ModelCard)]
    refuse_to_overwrite_inputs(outputs, [args.image, args.heads, args.checkpoint, *cards])
    image = load_image(args.image)
    prepare_output_folder(args.out)
    if args.coco_results is not None:
        prepare_output_folder(args.coco_results.parent, "folder of --coco-results")
    heads = load_heads(args.heads) if args.heads is not None else None
    if heads is None:
        note("no --heads given; only SAM's score and the entropy are reported")
    calibration = heads.calibration if heads is not None else None
    alpha_index(args.alpha, calibration.alphas if calibration is not None else ALPHA_GRID)  # before the model loads
    from usam.predictor import UncertainSAM

    if transformers_backend:
        from usam.transformers_adapter import TransformersImagePredictor

        models = [
            UncertainSAM(
                TransformersImagePredictor.from_pretrained(args.model, device=args.device), heads, alpha=args.alpha,
                bound=args.bound,
            )
        ]  # fmt: skip
    else:
        models = [
            UncertainSAM.from_pretrained(
                spec,
                heads,
                checkpoint=args.checkpoint,
                device=args.device,
                hydra_overrides=args.hydra_override,
                alpha=args.alpha,
                bound=args.bound,
            )
            for spec in specs
        ]
    model: Any = models[0]
    if escalation is not None:
        from usam.uses import CascadeSAM

        model = CascadeSAM(models[0], models[1], escalation)
    record = _predict_and_write(
        model,
        image,
        json_path,
        png_path,
        prompts,
        multimask_output=not args.single_mask,
        context={
            "image": str(args.image),
            "model": args.cascade if escalation is not None else args.model,
            "backend": args.backend,
            "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "heads": str(args.heads) if args.heads else None,
        },
    )
    if args.coco_results is not None:
        from usam.files import write_json_atomically
        from usam.outputs import coco_results

        results = coco_results(record, image_id=_coco_image_id(args.image, args.image_id), category_id=args.category_id)
        write_json_atomically(results, args.coco_results, indent=None)
        print(f"wrote {args.coco_results} ({len(results)} COCO results)")
    return 0


def _check_transformers_model_options(args: argparse.Namespace) -> None:
    """Refuse SAM2-package options with ``--backend transformers`` and a model that is not a transformers model.

    Raises:
        InvalidInputError: A ``--checkpoint`` or ``--hydra-override``, or a ``--model`` that is neither a Hugging Face
            id (``owner/name``) nor a folder.
        UsamError: transformers is not installed.
    """
    if args.checkpoint is not None or args.hydra_override:
        raise InvalidInputError(
            "--checkpoint and --hydra-override are for the sam2 backend; with --backend transformers, --model names "
            "the model (a Hugging Face id or a folder written by save_pretrained)"
        )
    if "/" not in str(args.model) and not Path(args.model).is_dir():
        raise InvalidInputError(
            f"with --backend transformers, --model must be a Hugging Face id such as facebook/sam2.1-hiera-tiny or a "
            f"folder written by save_pretrained, got {args.model!r}"
        )
    from usam.transformers_adapter import import_transformers

    import_transformers()  # a missing install is reported before any work


def _cascade_request(args: argparse.Namespace) -> Any:
    """The :class:`usam.uses.Escalation` of ``--cascade``/``--escalate``, or None without a cascade.

    Raises:
        UsamError: One option without the other, a cascade that is not two models, a bad rule, or --checkpoint.
    """
    if args.cascade is None and args.escalate is None:
        return None
    if args.cascade is None or args.escalate is None:
        raise UsamError("--cascade SMALL,LARGE and --escalate RULE:T go together (e.g. --escalate model-gap:0.05)")
    if len([name for name in args.cascade.split(",") if name.strip()]) != 2 or args.cascade.count(",") != 1:
        raise UsamError(
            f"--cascade takes two models as SMALL,LARGE (e.g. sam2.1-tiny,sam2.1-large), got {args.cascade!r}"
        )
    if args.checkpoint is not None:
        raise UsamError("--checkpoint names one model's weights; with --cascade use model cards that name theirs")
    if args.heads is None:
        raise UsamError("--cascade needs --heads with the heads its rule reads (model_gap, or the small iou_<size>)")
    from usam.uses import Escalation

    return Escalation.parse(args.escalate)


def _object_uses(model: Any, result: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The prediction to write (a cascade's merged answers) and, per object, the cascade's and the mask choice's fields.

    The mask choice (``usam_pick``, ``show_all_masks``) is given when the answering model has its IoU head.
    """
    from usam.errors import HeadsFileError
    from usam.uses import CascadePrediction, choose_masks, object_prediction

    extras: list[dict[str, Any]] = []
    if isinstance(result, CascadePrediction):
        for index in range(result.num_objects):
            answering = model.large if result.escalated[index] else model.small
            extras.append(
                {
                    "cascade": {
                        "answered_by": result.answered_by[index],
                        "model": result.model_names[result.answered_by[index]],
                        "escalated": bool(result.escalated[index]),
                        "rule": str(result.escalation.rule),
                        "threshold": result.escalation.threshold,
                        "estimate": float(result.estimate[index]),
                    },
                    **_mask_choice_fields(answering, result.answer(index), choose_masks, HeadsFileError),
                }
            )
        return result.merged(), extras
    count = result.sam_scores.shape[0] if result.sam_scores.ndim == 2 else 1
    for index in range(count):
        extras.append(_mask_choice_fields(model, object_prediction(result, index), choose_masks, HeadsFileError))
    return result, extras


def _mask_choice_fields(model: Any, prediction: Any, choose: Any, missing: type[Exception]) -> dict[str, Any]:
    if prediction.sam_scores.shape[-1] < 2:
        return {}
    try:
        choice = choose(prediction, model)
    except missing:  # no IoU head of this model: SAM's pick stands, nothing to add
        return {}
    show_all = None if choice.show_all_masks is None else bool(choice.show_all_masks)
    return {"usam_pick": int(choice.index), "sam_pick": int(choice.sam_index), "show_all_masks": show_all}


def _predict_and_write(
    model: Any,
    image: np.ndarray,
    json_path: Path,
    png_path: Path,
    prompts: Prompts,
    *,
    multimask_output: bool,
    context: dict[str, Any],
    footnote: str | None = None,
) -> dict[str, Any]:
    from usam.files import write_json_atomically
    from usam.head_table import is_gap_head
    from usam.outputs import prediction_record
    from usam.visualize import render_prediction

    model.set_image(image)
    result = model.predict(
        point_coords=prompts.point_coords,
        point_labels=prompts.point_labels,
        box=prompts.box,
        multimask_output=multimask_output,
    )
    result, extras = _object_uses(model, result)
    heads = model.heads
    record = prediction_record(
        result,
        prompts.descriptions,
        **context,
        multimask_output=multimask_output,
        heads_pairing=heads.metadata.pairing if heads is not None else None,
        heads_sam2_version=heads.metadata.sam2_version if heads is not None else None,
    )
    for obj, extra in zip(record["objects"], extras, strict=True):
        obj.update(extra)
    # Masks are compressed RLE strings, so the indented record stays small.
    write_json_atomically(record, json_path)
    render_prediction(
        image,
        result,
        png_path,
        points=prompts.point_coords,
        point_labels=prompts.point_labels,
        box=prompts.box,
        title=f"{context.get('image', '')} - {context.get('model', '')}",
        footnote=footnote,
    )
    several = len(record["objects"]) > 1
    for obj in record["objects"]:
        for entry in obj["masks"]:
            summary = ", ".join(
                f"{name} {value:+.3f}" if is_gap_head(name) else f"{name} {value:.3f}"
                for name, value in entry["uncertainty"].items()
            )
            label = f"object {obj['index']} mask {entry['index']}" if several else f"mask {entry['index']}"
            print(
                f"{label}: SAM score {entry['sam_score']:.3f}, entropy {entry['entropy']:.3f}, "
                f"area {entry['area']} px" + (f"; {summary}" if summary else "")
            )
    print(f"wrote {json_path} and {png_path}")
    return record


def add_selfcheck(subparsers: Any) -> None:
    """Add the ``selfcheck`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "selfcheck",
        help="verify the installation offline on a randomly initialised model",
        description="Run the whole path (image, SAM2, token hooks, nine heads, entropy, JSON and PNG) offline on a "
        "randomly initialised SAM2 and random heads. The numbers are meaningless; the check only shows that usam "
        "works on this machine.",
    )
    parser.add_argument(
        "--out", type=Path, help="where to write selfcheck.usam.json and .png (default: a temporary folder)"
    )
    parser.add_argument("--image", type=Path, help="image to use (default: the bundled example)")
    parser.add_argument(
        "--model", default="sam2.1-tiny", help="SAM2 config to build with random weights; default %(default)s"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=1024,
        help="SAM2 input size in pixels, a multiple of 32 (smaller is faster); default %(default)s",
    )
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: CUDA if available, else CPU)")
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
    overrides = (
        [] if args.image_size == 1024 else sam2_adapter.small_model_overrides(args.image_size, small_trunk=False)
    )
    image_path = args.image or Path(str(resources.files("usam") / "assets" / "example.jpg"))
    out = args.out or Path(tempfile.mkdtemp(prefix="usam-selfcheck-"))
    json_path, png_path = output_paths(out, "selfcheck")
    refuse_to_overwrite_inputs([json_path, png_path], [image_path])
    prepare_output_folder(out)
    image = load_image(image_path)
    sam_model = sam2_adapter.build_sam2_model(spec, device=args.device, random_weights=True, hydra_overrides=overrides)
    predictor = sam2_adapter.make_image_predictor(sam_model)
    model = UncertainSAM(predictor, random_heads(HEAD_NAMES, sam2_version=spec.version))
    height, width = image.shape[:2]
    _predict_and_write(
        model,
        image,
        json_path,
        png_path,
        make_prompts([(width * 0.37, height * 0.6)], [], []),
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
