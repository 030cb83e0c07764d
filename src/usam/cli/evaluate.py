"""``usam evaluate``: the paper's evaluation of heads and baselines on a token store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from usam.cli.common import warn
from usam.presets import PRESETS, Preset


def add_evaluate(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="reproduce the paper's evaluation: correction curves, relative AUC, correlations, inputs ablation",
        description="Score heads and entropy baselines on a token store: the four correction scenarios (model "
        "selection, prompt refinement, task supervision, segmentation uncertainty), relative AUC over r in [0, 1] "
        "and [0, 0.5], the Pearson correlation table and an inputs ablation (tokens, signals, both). Writes "
        "REPORT/report.md, REPORT/results.json and PNG plots (plots an earlier evaluation wrote into REPORT are "
        "replaced).",
    )
    parser.add_argument("--data", type=Path, required=True, metavar="STORE", help="token store folder (usam extract)")
    parser.add_argument(
        "--heads", type=Path, required=True, help="heads file (usam train) or the authors' released heads folder"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="REPORT", help="report folder (created if missing)")
    defaults = ", ".join(f"{preset}: {PRESETS[preset].evaluation_model}" for preset in Preset)
    parser.add_argument(
        "--model",
        default=None,
        help="SAM2 size to evaluate: tiny, small, base-plus or large, or a full name such as sam2.1-tiny when the "
        f"store holds two versions (default: the preset's; {defaults})",
    )
    parser.add_argument(
        "--preset",
        choices=Preset.values(),
        default=str(Preset.USAM),
        help="usam's defaults or the paper's (the Large model for the correlation table and the evaluated rows); "
        "an explicit --model wins (default %(default)s)",
    )
    parser.add_argument(
        "--seeds", type=int, default=10, help="random orders averaged for the random baseline (default %(default)s)"
    )
    parser.add_argument(
        "--no-ablation", action="store_true", help="skip the inputs ablation (it trains heads on five inputs variants)"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from usam.evaluation import run_evaluation

    result = run_evaluation(
        args.data,
        args.heads,
        args.out,
        model=args.model,
        preset=args.preset,
        seeds=args.seeds,
        ablation=not args.no_ablation,
        progress=not args.no_progress,
    )
    for message in result.warnings:
        warn(message)
    print(f"wrote {args.out / 'report.md'}, {args.out / 'results.json'} and plots")
    return 0
