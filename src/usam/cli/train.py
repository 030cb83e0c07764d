"""``usam train``: heads from a token store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from usam.errors import UsamError


def add_train(subparsers: Any) -> None:
    """Add the ``train`` subcommand to ``subparsers``."""
    from usam.head_table import HEAD_NAMES

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
    from usam.training import train_from_store

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
