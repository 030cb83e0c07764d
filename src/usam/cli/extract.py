"""``usam extract`` and ``usam store-info``: datasets into a token store, and what a store holds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_extract(subparsers: Any) -> None:
    """Add the ``extract`` subcommand to ``subparsers``."""
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
    from usam.extraction import ExtractionOptions, build_models, extraction_metadata, parse_shard, run_extraction

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
