"""``usam extract`` and ``usam store-info``: datasets into a token store, and what a store holds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from usam.cli.common import warn

EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C, as shells report a process ended by SIGINT."""


def add_extract(subparsers: Any) -> None:
    """Add the ``extract`` subcommand to ``subparsers``."""
    from usam.datasets import DATASETS
    from usam.datasets.davis import RESOLUTIONS
    from usam.devices import Precision
    from usam.presets import PRESETS, Preset, TieRule
    from usam.store import TOKEN_DTYPES

    usam_defaults, paper_defaults = PRESETS[Preset.USAM], PRESETS[Preset.PAPER]
    parser = subparsers.add_parser(
        "extract",
        help="turn a segmentation dataset into tokens, targets and entropy baselines (a token store)",
        description="Run SAM2 models over a dataset and write one row per (image, object, model) into a sharded "
        "Parquet store: decoder tokens, SAM's scores, IoUs with the truth, the training targets (model, prompt and "
        "task gaps) and the Monte Carlo entropy baselines. Killing it (or Ctrl-C) and running the same command "
        "again finishes the job with every row exactly once; a rerun with other weights, data or options is "
        "refused. Split the work over N processes with --shard I/N (or torchrun / a SLURM array, read from "
        "RANK/WORLD_SIZE or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT).",
    )
    parser.add_argument("--dataset", required=True, choices=list(DATASETS), help="the dataset's reader")
    parser.add_argument("--root", type=Path, required=True, help="dataset folder, in the dataset's own layout")
    parser.add_argument("--split", default="val", help="dataset split, e.g. train or val (default %(default)s)")
    parser.add_argument("--out", type=Path, required=True, metavar="STORE", help="token store folder")
    parser.add_argument(
        "--preset",
        choices=Preset.values(),
        default=Preset.USAM.value,
        help="defaults of --models, --precision, --tie-rule and --davis-resolution: 'usam' (default) or 'paper' "
        f"(the authors' choices: {' '.join(paper_defaults.models)}, {paper_defaults.extraction_precision}, tie rule "
        f"{paper_defaults.tie_rule}, DAVIS {paper_defaults.davis_resolution}); options given explicitly win",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help=f"SAM2 models to run (default: the preset's; usam: {' '.join(usam_defaults.models)}), names and model "
        "card files (.json/.yaml/.yml) mixed as needed; model_gap needs a tiny and a large of one version, or two "
        "cards whose names differ only in the size (mysam-tiny, mysam-large)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="folder with the official checkpoints under their official names (e.g. sam2.1_hiera_tiny.pt); "
        "default: the download cache (model cards name their own checkpoints)",
    )
    parser.add_argument(
        "--precision",
        choices=Precision.values(),
        help=f"number type of SAM2 (default on a GPU: the preset's; usam: {usam_defaults.extraction_precision} "
        f"autocast, paper: {paper_defaults.extraction_precision}; on a CPU float32); an explicit bfloat16 autocasts "
        "on a CPU too (fast only with AVX512-BF16 or AMX)",
    )
    parser.add_argument(
        "--tie-rule",
        choices=TieRule.values(),
        help=f"which of equally good masks is the best one for the Monte Carlo picks (default: the preset's; usam: "
        f"{usam_defaults.tie_rule}, paper: {paper_defaults.tie_rule})",
    )
    parser.add_argument(
        "--davis-resolution",
        choices=list(RESOLUTIONS),
        help=f"DAVIS frames to read, with --dataset davis only (default: the preset's; usam: "
        f"{usam_defaults.davis_resolution}, paper: {paper_defaults.davis_resolution})",
    )
    parser.add_argument(
        "--no-monte-carlo",
        action="store_true",
        help="skip the Monte Carlo samples (8 prompts x 5 image versions per model): h_prompt, h_augmentation and "
        "h_all stay empty, the run is many times faster",
    )
    parser.add_argument("--shard", metavar="I/N", help="process shard I of N (default: from torchrun/SLURM, else 0/1)")
    parser.add_argument("--every", type=int, default=1, metavar="K", help="keep every K-th image or video frame")
    parser.add_argument("--start", type=int, default=0, help="first index of the selected images (default 0)")
    parser.add_argument("--stop", type=int, help="index after the last selected image (default: the end)")
    parser.add_argument("--limit", type=int, help="at most this many images (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of prompt sampling and image noise (default 0)")
    parser.add_argument(
        "--token-dtype",
        choices=list(TOKEN_DTYPES),
        default=TOKEN_DTYPES[0],
        help="value type of the stored tokens (default %(default)s; float16 halves the store)",
    )
    parser.add_argument(
        "--prompt-batch-size", type=int, help="prompts per decoder call (default: 2 on a CPU, 32 on a GPU)"
    )
    parser.add_argument(
        "--rows-per-part",
        type=int,
        default=2048,
        help="rows per Parquet part (default %(default)s; smaller loses less on a crash)",
    )
    parser.add_argument("--device", help="torch device (default: cuda:LOCAL_RANK under torchrun, CUDA, else CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--hydra-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="advanced: SAM2 config override (repeatable; after a model card's own; recorded in the store)",
    )
    parser.set_defaults(handler=_run_extract)


def _run_extract(args: argparse.Namespace) -> int:
    import os

    from usam.datasets import open_dataset
    from usam.devices import select_device
    from usam.errors import InvalidInputError
    from usam.extraction import (
        ExtractionInterrupted,
        ExtractionOptions,
        build_models,
        extraction_metadata,
        parse_shard,
        run_extraction,
    )
    from usam.presets import PRESETS, Preset

    preset = Preset(args.preset)
    defaults = PRESETS[preset]
    shard = parse_shard(args.shard)
    options = ExtractionOptions(
        monte_carlo=not args.no_monte_carlo,
        seed=args.seed,
        prompt_batch_size=args.prompt_batch_size,
        preset=preset,
        precision=args.precision,
        tie_rule=args.tie_rule,
    )
    reader_options: dict[str, Any] = {"every": args.every, "start": args.start, "stop": args.stop, "limit": args.limit}
    if args.dataset == "davis":
        reader_options["resolution"] = args.davis_resolution or defaults.davis_resolution
    elif args.davis_resolution is not None:
        raise InvalidInputError("--davis-resolution applies to --dataset davis only; drop it")
    reader = open_dataset(args.dataset, args.root, args.split, **reader_options)
    device = args.device
    if device is None and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    model_names = args.models or list(defaults.models)
    models = build_models(
        model_names,
        checkpoint_dir=args.checkpoint_dir,
        device=device,
        precision=options.precision_on(select_device(device)),
        hydra_overrides=args.hydra_override,
        progress=not args.no_progress,
    )
    try:
        counts = run_extraction(
            reader,
            models,
            args.out,
            options=options,
            shard=shard,
            token_dtype=args.token_dtype,
            rows_per_part=args.rows_per_part,
            progress=not args.no_progress,
            extra_metadata=extraction_metadata(model_names),
        )
    except ExtractionInterrupted as interruption:
        print(
            f"usam: interrupted: shard {shard[0]}/{shard[1]} has {interruption.images_in_store} images in "
            f"{args.out} ({interruption.counts['images']} from this run); run the same command again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(
        f"shard {shard[0]}/{shard[1]}: {counts['images']} images extracted now ({counts['images_before']} done "
        f"before), {counts['objects']} objects, {counts['rows']} rows, {counts['skipped']} skipped -> {args.out}"
    )
    if counts["skipped"]:
        warn(
            f"{counts['skipped']} image(s) could not be read and were skipped (listed with their reasons in the log); "
            "a rerun retries them, which helps only if their files were fixed"
        )
    return 0


def add_store_info(subparsers: Any) -> None:
    """Add the ``store-info`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "store-info",
        help="summarise a token store: rows, parts, shards, how it was made",
        description="Print what a token store made by `usam extract` holds, as JSON: its schema version, token "
        "type, shard count, the options it was extracted with, rows and parts, and each shard's manifest.",
    )
    parser.add_argument("store", type=Path, help="the token store folder (the --out of usam extract)")
    parser.add_argument("--parts", action="store_true", help="also list every part file")
    parser.set_defaults(handler=_run_store_info)


def _run_store_info(args: argparse.Namespace) -> int:
    from usam.files import json_text
    from usam.store import StoreReader

    info = StoreReader(args.store).info()
    if not args.parts:
        info.pop("parts", None)
    print(json_text(info), end="")
    return 0
