"""``usam testbed build`` and ``usam testbed run``: usam measured on trained SAM2 models of synthetic scenes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from usam.cli.common import EXIT_USER_ERROR, UsageParser, prepare_output_folder


def add_testbed(subparsers: Any) -> None:
    """Add the ``testbed`` command group (``build``, ``run``) to ``subparsers``."""
    from usam.heads import InputsVariant
    from usam.testbed.pipeline import HEAD_VARIANTS, USES_HEAD_INPUTS

    group = subparsers.add_parser(
        "testbed",
        help="build the test-bed (scenes, trained SAM2 models) and run usam's pipeline on it",
        description="A reproducible world in which usam's estimates can be measured on this machine: synthetic "
        "scenes that are ambiguous by construction, SAM2-architecture models trained on them from scratch, and "
        "usam's extract -> train -> evaluate pipeline on a held-out split. Run 'build', then 'run', with one --out.",
    )
    commands = group.add_subparsers(
        dest="testbed_command", metavar="STEP", help="build, then run", parser_class=UsageParser
    )
    build = commands.add_parser(
        "build",
        help="write the scene datasets and train the tiny, under-trained tiny and large models (cached)",
        description="Write DIR/scenes/{train,test} and train DIR/models/{tiny,tiny-early,large}.pt with their "
        "model cards. Whatever a run with the same settings finished is reused; an interrupted run resumes.",
    )
    run = commands.add_parser(
        "run",
        help="extract, train heads per seed, evaluate, and write DIR/results/results.md and results.json",
        description="Extract the training split (no Monte Carlo) and the test split (with Monte Carlo) with the "
        "three models, train heads per seed, evaluate each seed on the test split, and write the results page: "
        "relative AUC of every measure in the four correction scenarios with 95 % bootstrap intervals over test "
        "objects, the Pearson correlations, and each model's mIoU.",
    )
    for parser in (build, run):
        parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="the test-bed folder")
        parser.add_argument(
            "--quick",
            action="store_true",
            help="a smoke run: a few scenes and a few training steps per model (seconds; the numbers mean nothing); "
            "pass it to both steps",
        )
        parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    run.add_argument(
        "--seeds", type=int, default=3, help="seeds of the heads' initialisation and split (default %(default)s)"
    )
    run.add_argument("--device", help="torch device (default: CUDA when available, else the CPU)")
    run.add_argument(
        "--inputs",
        nargs="+",
        choices=InputsVariant.values(),
        default=list(HEAD_VARIANTS),
        metavar="INPUTS",
        help="inputs variants of the heads trained per seed, each its own rows on the results page: 'tokens' (the "
        "paper's), 'tokens+signals', 'signals' (SAM2's scalar signals only: the ablation). Must include "
        f"{USES_HEAD_INPUTS} (the uses run on it). Default: {' '.join(HEAD_VARIANTS)}",
    )
    build.set_defaults(handler=_run_build)
    run.set_defaults(handler=_run_run)

    def print_steps(_: argparse.Namespace) -> int:
        group.print_help(sys.stderr)
        return EXIT_USER_ERROR

    group.set_defaults(handler=print_steps)


def _settings(args: argparse.Namespace) -> Any:
    from usam.testbed import TestbedSettings

    return TestbedSettings.quick() if args.quick else TestbedSettings()


def _run_build(args: argparse.Namespace) -> int:
    from usam.testbed import build_testbed

    paths = build_testbed(
        prepare_output_folder(args.out, "test-bed folder"), _settings(args), progress=not args.no_progress
    )
    print(f"built the test-bed in {paths.root}; next: usam testbed run --out {args.out}" + (" --quick" * args.quick))
    return 0


def _run_run(args: argparse.Namespace) -> int:
    from usam.testbed import run_testbed
    from usam.testbed.pipeline import TestbedPaths

    run_testbed(
        args.out, _settings(args), seeds=args.seeds, progress=not args.no_progress, device=args.device,
        inputs=args.inputs,
    )  # fmt: skip
    print(f"wrote {TestbedPaths(args.out.expanduser()).results}/results.md and results.json")
    return 0
