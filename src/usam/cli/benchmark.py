"""``usam benchmark``: seconds per image of SAM2 alone and with each uncertainty method."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from usam.cli.common import add_model_options
from usam.errors import UsamError


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
