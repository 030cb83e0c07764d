"""The ``usam`` command line.

Every user error (a bad image, prompt, heads file or checkpoint, no network) is printed as one line on stderr and
ends the command with exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from usam.errors import UsamError

EXIT_USER_ERROR = 2
SELF_CHECK_WARNING = "self-check with RANDOM weights: the numbers are meaningless; they only show that usam runs"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like usam's other user errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _pair(text: str) -> tuple[float, float]:
    return tuple(_numbers(text, 2, "X,Y"))  # type: ignore[return-value]


def _box(text: str) -> tuple[float, float, float, float]:
    return tuple(_numbers(text, 4, "X0,Y0,X1,Y1"))  # type: ignore[return-value]


def _numbers(text: str, count: int, form: str) -> list[float]:
    parts = text.split(",")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"expected {form} (numbers separated by commas), got {text!r}")
    return values


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="sam2.1-tiny", help="SAM2 model name (see `usam models`); default %(default)s"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="local SAM2 checkpoint file; without it the official checkpoint is downloaded on first use into the "
        "cache folder ($USAM_CACHE_DIR, default ~/.cache/usam)",
    )
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: CUDA if available, else CPU)")
    parser.add_argument(
        "--hydra-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="advanced: extra Hydra override for the SAM2 config (repeatable), e.g. ++model.image_size=512 for a "
        "checkpoint fine-tuned at another resolution",
    )


# ---------------------------------------------------------------------------------------------------- predict


def _add_predict(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment an image with SAM2 and estimate the uncertainty of each mask",
        description="Segment IMAGE from point/box prompts and write DIR/<stem>.json (one entry per mask: SAM score, "
        "entropy, area, the heads' estimates, the mask as RLE) and DIR/<stem>.png (mask, uncertainty map, estimates "
        "in words).",
    )
    parser.add_argument("image", type=Path, help="image file (RGB, grayscale, RGBA or 16-bit)")
    _add_model_options(parser)
    parser.add_argument("--heads", type=Path, help="heads file (.safetensors) or the authors' released heads folder")
    parser.add_argument(
        "--point",
        type=_pair,
        action="append",
        default=[],
        metavar="X,Y",
        help="foreground click in pixels (repeatable)",
    )
    parser.add_argument(
        "--negative-point",
        type=_pair,
        action="append",
        default=[],
        metavar="X,Y",
        help="background click (repeatable)",
    )
    parser.add_argument("--box", type=_box, metavar="X0,Y0,X1,Y1", help="box prompt in pixels")
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
    from usam.heads import is_gap_head
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


# -------------------------------------------------------------------------------------------------- selfcheck


def _add_selfcheck(subparsers: Any) -> None:
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
    from usam.heads import HEAD_NAMES, random_heads
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


# ----------------------------------------------------------------------------------------------------- models


def _add_models(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the known SAM2 models and whether their checkpoints are cached",
        description="List the released SAM2 models usam knows, their checkpoint URLs, and the cache status.",
    )
    parser.set_defaults(handler=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from usam.download import cache_dir
    from usam.models import SAM2_MODELS

    folder = cache_dir() / "checkpoints"
    print(f"cache folder: {folder}")
    for spec in SAM2_MODELS.values():
        cached = "cached" if (folder / spec.checkpoint_name).is_file() else "not downloaded"
        print(f"{spec.name:<18} {spec.hf_id:<30} {cached:<15} {spec.url}")
    return 0


# ------------------------------------------------------------------------------------------------------ heads


def _add_convert_heads(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "convert-heads",
        help="convert the authors' released heads folder to a usam heads file",
        description="Read a folder of '<head>/model.pth' state dicts (the UncertainSAM authors' release, e.g. "
        "models/mlps/sam2.1) without unpickling anything but tensors, and write one .safetensors heads file.",
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("out", type=Path, help="output .safetensors file")
    parser.add_argument("--sam2-version", choices=["sam2", "sam2.1"], help="default: guessed from the folder name")
    parser.set_defaults(handler=_run_convert_heads)


def _run_convert_heads(args: argparse.Namespace) -> int:
    from usam.heads import load_heads

    if args.folder.exists() and not args.folder.is_dir():
        raise UsamError(f"{args.folder} is a file; convert-heads reads the authors' heads folder")
    heads = load_heads(args.folder, sam2_version=args.sam2_version)
    path = heads.save(args.out)
    print(f"wrote {path}: heads {heads.names}, pairing {heads.metadata.pairing}, for {heads.metadata.sam2_version}")
    return 0


def _add_heads_info(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "heads-info",
        help="show what a heads file contains",
        description="Print the metadata of a heads file or folder as JSON.",
    )
    parser.add_argument("heads", type=Path)
    parser.set_defaults(handler=_run_heads_info)


def _run_heads_info(args: argparse.Namespace) -> int:
    import json

    from usam.heads import load_heads

    heads = load_heads(args.heads)
    print(json.dumps(json.loads(heads.metadata.to_json()), indent=2))
    return 0


# ---------------------------------------------------------------------------------------------------- extract


def _add_extract(subparsers: Any) -> None:
    from usam.models import DEFAULT_MODELS

    parser = subparsers.add_parser(
        "extract",
        help="turn a segmentation dataset into tokens, targets and entropy baselines (a token store)",
        description="Run SAM2 models over a dataset and write one row per (image, object, model) into a sharded "
        "Parquet store: decoder tokens, SAM's scores, IoUs with the truth, the training targets (model, prompt and "
        "task gaps) and the Monte Carlo entropy baselines. Killing it and running the same command again finishes "
        "the job with every row exactly once. Split the work over N processes with --shard I/N (or torchrun / a "
        "SLURM array, read from RANK/WORLD_SIZE or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT).",
    )
    parser.add_argument("--dataset", required=True, choices=["coco", "ade20k", "davis", "mose", "sav", "folder"])
    parser.add_argument("--root", type=Path, required=True, help="dataset folder, in the dataset's own layout")
    parser.add_argument("--split", default="val", help="dataset split, e.g. train or val (default %(default)s)")
    parser.add_argument("--out", type=Path, required=True, metavar="STORE", help="token store folder")
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        metavar="MODEL",
        help="SAM2 models to run (default: %(default)s); model_gap needs a tiny and a large of one version",
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="folder with the official checkpoints under their official names (e.g. sam2.1_hiera_tiny.pt); "
        "default: the download cache",
    )
    parser.add_argument(
        "--no-monte-carlo",
        action="store_true",
        help="skip the Monte Carlo samples (8 prompts x 5 image versions per model): h_prompt, h_augmentation and "
        "h_all stay empty, the run is many times faster",
    )
    parser.add_argument("--shard", metavar="I/N", help="process shard I of N (default: from torchrun/SLURM, else 0/1)")
    parser.add_argument("--every", type=int, default=1, metavar="K", help="keep every K-th image or video frame")
    parser.add_argument("--start", type=int, default=0, help="first index of the selected images")
    parser.add_argument("--stop", type=int, help="index after the last selected image")
    parser.add_argument("--limit", type=int, help="at most this many images")
    parser.add_argument("--seed", type=int, default=0, help="seed of prompt sampling and image noise")
    parser.add_argument("--token-dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument(
        "--prompt-batch-size", type=int, help="prompts per decoder call (default: 2 on a CPU, 32 on a GPU)"
    )
    parser.add_argument(
        "--rows-per-part", type=int, default=2048, help="rows per Parquet part (smaller loses less on a crash)"
    )
    parser.add_argument("--device", help="torch device (default: cuda:LOCAL_RANK under torchrun, CUDA, else CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--hydra-override", action="append", default=[], metavar="KEY=VALUE", help="advanced: SAM2 config override"
    )
    parser.set_defaults(handler=_run_extract)


def _run_extract(args: argparse.Namespace) -> int:
    import os

    from usam.datasets import open_dataset
    from usam.extract import ExtractionOptions, build_models, extraction_metadata, parse_shard, run_extraction

    shard = parse_shard(args.shard)
    reader = open_dataset(
        args.dataset, args.root, args.split, every=args.every, start=args.start, stop=args.stop, limit=args.limit
    )
    device = args.device
    if device is None and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    models = build_models(
        args.models,
        checkpoint_dir=args.checkpoint_dir,
        device=device,
        hydra_overrides=args.hydra_override,
        progress=not args.no_progress,
    )
    counts = run_extraction(
        reader,
        models,
        args.out,
        options=ExtractionOptions(
            monte_carlo=not args.no_monte_carlo, seed=args.seed, prompt_batch_size=args.prompt_batch_size
        ),
        shard=shard,
        token_dtype=args.token_dtype,
        rows_per_part=args.rows_per_part,
        progress=not args.no_progress,
        extra_metadata=extraction_metadata(args.models),
    )
    print(
        f"shard {shard[0]}/{shard[1]}: {counts['images']} images extracted now ({counts['images_before']} done "
        f"before), {counts['objects']} objects, {counts['rows']} rows, {counts['skipped']} skipped -> {args.out}"
    )
    if counts["skipped"]:
        print(
            f"usam: warning: {counts['skipped']} image(s) could not be read; run again to retry them", file=sys.stderr
        )
    return 0


def _add_store_info(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "store-info",
        help="summarise a token store: rows, parts, shards, how it was made",
        description="Print what a token store made by `usam extract` holds, as JSON: its schema version, token "
        "type, shard count, the options it was extracted with, rows and parts, and each shard's manifest.",
    )
    parser.add_argument("store", type=Path)
    parser.add_argument("--parts", action="store_true", help="also list every part file")
    parser.set_defaults(handler=_run_store_info)


def _run_store_info(args: argparse.Namespace) -> int:
    import json

    from usam.store import store_info

    info = store_info(args.store)
    if not args.parts:
        info.pop("parts", None)
    manifests = sorted(args.store.glob("_manifest-*.json"))
    info["completed_images_per_shard"] = {
        path.stem.removeprefix("_manifest-"): json.loads(path.read_text()).get("completed_images") for path in manifests
    }
    print(json.dumps(info, indent=2))
    return 0


# ------------------------------------------------------------------------------------------------ train/evaluate


def _add_train(subparsers: Any) -> None:
    from usam.heads import HEAD_NAMES

    parser = subparsers.add_parser(
        "train",
        help="train UncertainSAM heads on a token store",
        description="Train any subset of the nine heads on a token store made by `usam extract` and write a heads "
        "file that `usam predict` and usam.load_heads read. All heads train together in one vectorised model; the "
        "validation split is by image; the best epoch by validation loss is kept.",
    )
    parser.add_argument("--data", type=Path, required=True, metavar="STORE", help="token store folder")
    parser.add_argument("--out", type=Path, required=True, metavar="HEADS", help="heads file to write (.safetensors)")
    parser.add_argument(
        "--heads", nargs="+", choices=list(HEAD_NAMES), metavar="NAME", help="heads to train (default: all possible)"
    )
    parser.add_argument(
        "--pairing",
        choices=["true", "as-released"],
        default="true",
        help="mask token paired with a mask: 'true' = the token that produced it; 'as-released' = the one before "
        "(matches the authors' released heads). Default %(default)s",
    )
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="use rows of these models (default: all)")
    parser.add_argument(
        "--pool-sizes", action="store_true", help="train each iou_<size> head on all models' rows (as the paper does)"
    )
    parser.add_argument(
        "--hpo", type=int, default=0, metavar="TRIALS", help="Optuna trials per head over the paper's search space"
    )
    parser.add_argument(
        "--dataset-defaults",
        default="coco",
        choices=["coco", "ade20k", "sa-v", "davis"],
        help="whose paper hyper-parameters to use without --hpo (default %(default)s)",
    )
    parser.add_argument("--device", help="torch device (default: CUDA when available, else CPU)")
    parser.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="type of the large matrix products; bfloat16 = mixed precision, about twice as fast on CPUs with "
        "AVX512-BF16 or AMX and on recent GPUs (weights and updates stay float32). Default %(default)s",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from usam.heads import load_heads
    from usam.trainer import train_from_store

    if args.hpo < 0:
        raise UsamError("--hpo must be 0 or more trials")
    path = train_from_store(
        args.data,
        args.out,
        heads=args.heads,
        pairing=args.pairing,
        models=args.models,
        hpo_trials=args.hpo,
        dataset_defaults=args.dataset_defaults,
        seed=args.seed,
        pool_sizes=args.pool_sizes,
        progress=not args.no_progress,
        device=args.device,
        precision=args.precision,
    )
    heads = load_heads(path)
    per_head = heads.metadata.training.get("heads", {})
    for name in heads.names:
        values = per_head.get(name, {}).get("validation", {})
        summary = ", ".join(f"{key} {value:.4f}" for key, value in values.items() if isinstance(value, float))
        print(f"{name}: {summary}" if summary else name)
    print(f"wrote {path}")
    return 0


def _add_evaluate(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="reproduce the paper's evaluation: correction curves, relative AUC, correlations, token ablation",
        description="Score heads and entropy baselines on a token store: the four correction scenarios (model "
        "selection, prompt refinement, task supervision, segmentation uncertainty), relative AUC over r in [0, 1] "
        "and [0, 0.5], the Pearson correlation table and a token ablation. Writes REPORT/report.md, "
        "REPORT/results.json and PNG plots.",
    )
    parser.add_argument("--data", type=Path, required=True, metavar="STORE", help="token store folder")
    parser.add_argument("--heads", type=Path, required=True, help="heads file or the authors' released folder")
    parser.add_argument("--out", type=Path, required=True, metavar="REPORT", help="report folder")
    parser.add_argument(
        "--model",
        default="tiny",
        help="SAM2 size to evaluate: tiny, small, base-plus or large, or a full name such as sam2.1-tiny when the "
        "store holds two versions (default %(default)s)",
    )
    parser.add_argument("--seeds", type=int, default=10, help="random orders averaged for the random baseline")
    parser.add_argument("--no-ablation", action="store_true", help="skip the token ablation (it trains three heads)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from usam.evaluate import run_evaluation

    run_evaluation(
        args.data,
        args.heads,
        args.out,
        model=args.model,
        seeds=args.seeds,
        ablation=not args.no_ablation,
        progress=not args.no_progress,
    )
    print(f"wrote {args.out / 'report.md'}, {args.out / 'results.json'} and plots")
    return 0


# -------------------------------------------------------------------------------------------------- benchmark


def _add_benchmark(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="seconds per image of SAM2 alone and with each uncertainty method (the paper's runtime table)",
        description="Measure, on this machine, the seconds per image of SAM2 alone, + entropy, + five image "
        "augmentations (Monte Carlo), + eight prompts (Monte Carlo), and + USAM heads, each as a ratio to SAM2 alone.",
    )
    _add_model_options(parser)
    parser.add_argument("--heads", type=Path, help="heads to time (default: all nine with random weights)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build SAM2 with random weights instead of loading a checkpoint (timings do not depend on the weights)",
    )
    parser.add_argument("--image", type=Path, help="image to use (default: the bundled example)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median reported)")
    parser.set_defaults(handler=_run_benchmark)


def _run_benchmark(args: argparse.Namespace) -> int:
    import json
    from importlib import resources

    from usam.heads import random_heads
    from usam.images import load_image
    from usam.models import get_model_spec
    from usam.predictor import UncertainSAM
    from usam.runtime import measure_runtime

    if args.repeats < 1:
        raise UsamError("--repeats must be at least 1")
    spec = get_model_spec(args.model)
    image = load_image(args.image or Path(str(resources.files("usam") / "assets" / "example.jpg")))
    heads = args.heads if args.heads is not None else random_heads(sam2_version=spec.version)
    model = UncertainSAM.from_pretrained(
        spec.name,
        heads,
        checkpoint=args.checkpoint,
        device=args.device,
        random_weights=args.random_weights,
        hydra_overrides=args.hydra_override,
    )
    seconds = measure_runtime(model, image, repeats=args.repeats)
    reference = seconds["sam2"]
    names = {
        "sam2": "SAM2 alone",
        "entropy": "+ entropy",
        "augmentations": "+ 5 image augmentations (MC)",
        "prompts": "+ 8 prompts (MC)",
        "usam": f"+ USAM ({len(model.heads.names)} heads)",
    }
    print(f"{spec.name} on {model.device}, image {image.shape[1]}x{image.shape[0]}, median of {args.repeats}")
    print(f"{'method':<32}{'s/image':>10}{'x SAM2':>9}")
    for key, label in names.items():
        print(f"{label:<32}{seconds[key]:>10.3f}{seconds[key] / reference:>9.2f}")
    print(json.dumps({"model": spec.name, "device": str(model.device), "seconds_per_image": seconds}))
    return 0


# ------------------------------------------------------------------------------------------------------ main

_SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_predict,
    _add_selfcheck,
    _add_models,
    _add_convert_heads,
    _add_heads_info,
    _add_extract,
    _add_store_info,
    _add_train,
    _add_evaluate,
    _add_benchmark,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``usam`` argument parser with all subcommands."""
    from usam import __version__

    parser = _Parser(
        prog="usam",
        description="UncertainSAM: uncertainty estimates for every mask of Segment Anything 2.",
        epilog="Run 'usam COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"usam {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``usam`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, --version, or a usage error already printed
        return int(exit_request.code or 0)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    try:
        with warnings.catch_warnings():
            # SAM2's predictor scripts a function with torch.jit, which torch deprecates; not the user's business.
            warnings.filterwarnings("ignore", message=".*torch.jit.*", category=DeprecationWarning)
            return args.handler(args)
    except UsamError as error:
        print(f"usam: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("usam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
