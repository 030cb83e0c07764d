"""``usam evaluate``: the paper's evaluation of heads and baselines on a token store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_evaluate(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand to ``subparsers``."""
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
    from usam.evaluation import run_evaluation

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
