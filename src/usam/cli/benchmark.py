"""``usam benchmark``: seconds per image of SAM2 alone and with each uncertainty method."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from usam.cli.common import add_model_options
from usam.devices import Precision
from usam.runtime import DEFAULT_ITERATIONS, DEFAULT_WARMUP, Protocol, Variant, measure_runtime

BOTH_PROTOCOLS = "both"


def add_benchmark(subparsers: Any) -> None:
    """Add the ``benchmark`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "benchmark",
        help="seconds per image of SAM2 alone and with each uncertainty method (the paper's runtime table)",
        description="Measure, on this machine, the seconds per image of SAM2 alone, + entropy, + five image "
        "augmentations (Monte Carlo), + eight prompts (Monte Carlo), and + USAM heads, each as a ratio to SAM2 alone.",
    )
    add_model_options(parser)
    parser.add_argument("--heads", type=Path, help="heads to time (default: all nine with random weights)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build SAM2 with random weights instead of loading a checkpoint (timings do not depend on the weights)",
    )
    parser.add_argument("--image", type=Path, help="image to use (default: the bundled example)")
    parser.add_argument(
        "--protocol",
        choices=[*Protocol.values(), BOTH_PROTOCOLS],
        default=Protocol.USAM.value,
        help="usam: three output masks, the eight prompts in one call, augmentations timed, interleaved rounds, "
        "median; paper: the paper's Table 7 (one output mask, eight sequential calls, augmented images prepared "
        "beforehand, each variant on its own, mean); both: one table each (default %(default)s)",
    )
    parser.add_argument(
        "--iterations",
        "--repeats",
        type=int,
        help=f"timed runs per variant (default: {DEFAULT_ITERATIONS[Protocol.USAM]} for usam, "
        f"{DEFAULT_ITERATIONS[Protocol.PAPER]} for paper)",
    )
    parser.add_argument(
        "--warmup", type=int, default=DEFAULT_WARMUP, help="untimed runs per variant first (default %(default)s)"
    )
    parser.add_argument(
        "--precision",
        choices=Precision.values(),
        help="what every variant's SAM2 runs in (default: bfloat16 autocast on CUDA, as SAM2's demos; float32 "
        "elsewhere); bfloat16 on a CPU autocasts there too and is fast only with bfloat16 hardware",
    )
    parser.set_defaults(handler=_run_benchmark)


def _run_benchmark(args: argparse.Namespace) -> int:
    import json
    from importlib import resources

    from usam.heads import random_heads
    from usam.images import load_image
    from usam.model_card import resolve_model
    from usam.predictor import UncertainSAM
    from usam.validation import check_int

    # Checked before the model is built, with the options' own names.
    check_int(args.iterations, "--iterations", minimum=1, optional=True)
    check_int(args.warmup, "--warmup", minimum=0)
    protocols = list(Protocol) if args.protocol == BOTH_PROTOCOLS else [Protocol(args.protocol)]
    spec = resolve_model(args.model)
    image = load_image(args.image or Path(str(resources.files("usam") / "assets" / "example.jpg")))
    heads = args.heads if args.heads is not None else random_heads(sam2_version=spec.version)
    model = UncertainSAM.from_pretrained(
        spec,
        heads,
        checkpoint=args.checkpoint,
        device=args.device,
        precision=args.precision,
        random_weights=args.random_weights,
        hydra_overrides=args.hydra_override,
    )
    measurements = [
        measure_runtime(model, image, protocol=protocol, iterations=args.iterations, warmup=args.warmup)
        for protocol in protocols
    ]
    labels = {
        Variant.SAM2: "SAM2 alone",
        Variant.ENTROPY: "+ entropy",
        Variant.AUGMENTATIONS: "+ 5 image augmentations (MC)",
        Variant.PROMPTS: "+ 8 prompts (MC)",
        Variant.USAM: f"+ USAM ({len(model.heads.names)} heads)",
    }
    summaries = {
        Protocol.USAM: "usam protocol: 3 output masks, 8 prompts in one call, augmentations timed, interleaved",
        Protocol.PAPER: "paper protocol (Table 7): 1 output mask, 8 sequential calls, augmentations prepared",
    }
    for index, measurement in enumerate(measurements):
        if index:
            print()
        seconds = measurement.seconds_per_image
        print(
            f"{spec.name} on {model.device} in {measurement.precision}, image {image.shape[1]}x{image.shape[0]}, "
            f"{measurement.statistic} of {measurement.iterations} after {measurement.warmup} warm-up; "
            f"{summaries[measurement.protocol]}"
        )
        print(f"{'method':<32}{'s/image':>10}{'x SAM2':>9}")
        for variant, label in labels.items():
            print(f"{label:<32}{seconds[variant]:>10.3f}{seconds[variant] / seconds[Variant.SAM2]:>9.2f}")
    for measurement in measurements:
        print(json.dumps({"model": spec.name, "device": str(model.device), **measurement.to_json()}))
    return 0
