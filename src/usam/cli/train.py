"""``usam train``: heads from a token store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_train(subparsers: Any) -> None:
    """Add the ``train`` subcommand to ``subparsers``."""
    from usam.devices import Precision
    from usam.head_table import HEAD_NAMES, Pairing
    from usam.heads import InputsVariant
    from usam.presets import Preset, TieRule
    from usam.training import PAPER_DEFAULTS, Recipe

    parser = subparsers.add_parser(
        "train",
        help="train UncertainSAM heads on a token store",
        description="Train any subset of the nine heads on a token store made by `usam extract` and write a heads "
        "file that `usam predict` and usam.load_heads read. All heads train together in one vectorised model; the "
        "validation split is by image; the best epoch by validation loss is kept. Rows with NaN or infinite "
        "targets or tokens are dropped with a warning and counted in the heads' metadata.",
    )
    parser.add_argument("--data", type=Path, required=True, metavar="STORE", help="token store folder")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="HEADS",
        help="heads file to write (.safetensors), checked before the store is read; not a folder, not in the store",
    )
    parser.add_argument(
        "--heads", nargs="+", choices=list(HEAD_NAMES), metavar="NAME", help="heads to train (default: all possible)"
    )
    parser.add_argument(
        "--preset",
        choices=Preset.values(),
        default=Preset.USAM.value,
        help="defaults of --pool-sizes and --tie-rule: 'paper' pools the size heads and uses the authors' tie "
        "rule (last); 'usam' trains each size head on its own rows with the first tie rule. Explicit options win. "
        "Default %(default)s",
    )
    parser.add_argument(
        "--recipe",
        choices=Recipe.values(),
        help="how heads train: 'usam' = AdamW, batch 1024, warm-up and cosine decay, early stopping on the "
        "validation loss (reaches the paper recipe's quality in a fraction of its time); 'paper' = the paper's SGD "
        "values per dataset (see --dataset-defaults). Default: usam, or paper with --hpo or --dataset-defaults",
    )
    parser.add_argument(
        "--pairing",
        choices=Pairing.values(),
        default=Pairing.TRUE.value,
        help="mask token paired with a mask: 'true' = the token that produced it; 'as-released' = the one before "
        "(matches the authors' released heads). Default %(default)s",
    )
    parser.add_argument(
        "--tie-rule",
        choices=TieRule.values(),
        help="which of equally good masks gives the mask token a head reads (default: the one the store's "
        "extraction recorded, else the preset's)",
    )
    parser.add_argument(
        "--inputs",
        choices=InputsVariant.values(),
        default=InputsVariant.TOKENS.value,
        help="what the heads read: 'tokens' = [IoU token, mask token] as the paper; 'signals' = SAM2's scalar "
        "signals of the mask (scores, object score, H_Std, area, stability; needs a store of schema version 2); "
        "'tokens+signals' = both. Default %(default)s",
    )
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="use rows of these models (default: all)")
    pooling = parser.add_mutually_exclusive_group()
    pooling.add_argument(
        "--pool-sizes",
        dest="pool_sizes",
        action="store_const",
        const=True,
        help="train each iou_<size> head on all models' rows, each with the IoU of that size's model on the same "
        "object (as the paper does; default with --preset paper)",
    )
    pooling.add_argument(
        "--no-pool-sizes",
        dest="pool_sizes",
        action="store_const",
        const=False,
        help="train each iou_<size> head on its own size's rows with their own IoU (default with --preset usam)",
    )
    parser.add_argument(
        "--hpo",
        type=int,
        default=0,
        metavar="TRIALS",
        help="Optuna trials per head over the paper's search space, each head with its own seeded sampler; one "
        "line per trial on stderr (default 0: the paper's hyper-parameters)",
    )
    parser.add_argument(
        "--dataset-defaults",
        choices=sorted(PAPER_DEFAULTS),
        help="whose paper hyper-parameters --recipe paper uses without --hpo (default: inferred from the store's "
        "dataset; COCO's, with a warning, for mose, folder or mixed stores)",
    )
    parser.add_argument("--device", help="torch device (default: CUDA when available, else CPU)")
    parser.add_argument(
        "--precision",
        choices=Precision.values(),
        default=Precision.FLOAT32.value,
        help="type of the large matrix products; bfloat16 = mixed precision, about twice as fast on CPUs with "
        "AVX512-BF16 or AMX and on recent GPUs (weights and updates stay float32). Default %(default)s",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split, initial weights, shuffling and search (default 0)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (trial lines still appear)")
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from usam.heads import INPUTS_OF_VARIANT, InputsVariant, load_heads
    from usam.training import train_from_store

    def print_trial(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    path = train_from_store(
        args.data,
        args.out,
        heads=args.heads,
        pairing=args.pairing,
        models=args.models,
        hpo_trials=args.hpo,
        dataset_defaults=args.dataset_defaults,
        seed=args.seed,
        preset=args.preset,
        pool_sizes=args.pool_sizes,
        tie_rule=args.tie_rule,
        inputs=INPUTS_OF_VARIANT[InputsVariant(args.inputs)],
        progress=not args.no_progress,
        device=args.device,
        precision=args.precision,
        log=print_trial,
        recipe=args.recipe,
    )
    heads = load_heads(path)
    per_head = heads.metadata.training.get("heads", {})
    for name in heads.names:
        values = per_head.get(name, {}).get("validation", {})
        summary = ", ".join(f"{key} {value:.4f}" for key, value in values.items() if isinstance(value, float))
        print(f"{name}: {summary}" if summary else name)
    print(f"wrote {path}")
    return 0
