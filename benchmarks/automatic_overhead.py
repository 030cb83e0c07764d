"""Cost of usam's estimates on SAM2's automatic mask generator: the generator with nine heads / without heads.

Builds sam2.1 tiny (random weights: speed does not depend on the values) at ``--image-size`` on the CPU and times
``UncertainMaskGenerator.generate`` on one image with nine heads (token hook, fused heads, estimates carried through
SAM2's filters) and without heads (SAM2's generator plus the entropy of the surviving masks, which both variants
compute), in interleaved rounds so drifts of the machine hit both alike. SAM's thresholds are off and box NMS keeps
everything, so every mask goes through every step. Prints the medians and their ratio (target <= 1.02).

    .venv/bin/python benchmarks/automatic_overhead.py [--image-size 1024] [--points-per-side 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

from usam import sam2_adapter
from usam.automatic import UncertainMaskGenerator
from usam.head_table import HEAD_NAMES
from usam.heads import random_heads
from usam.runtime import interleaved_medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=1024, help="SAM2 input size (a multiple of 32)")
    parser.add_argument("--points-per-side", type=int, default=16, help="grid of N x N points")
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    overrides = [] if args.image_size == 1024 else [f"++model.image_size={args.image_size}"]
    sam_model = sam2_adapter.build_sam2_model(
        "sam2.1-tiny", device="cpu", random_weights=True, hydra_overrides=overrides
    )
    options = {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0,
    }
    with_heads = UncertainMaskGenerator(sam_model, random_heads(HEAD_NAMES), **options)
    without_heads = UncertainMaskGenerator(sam_model, None, **options)
    rng = np.random.default_rng(0)
    height = args.image_size * 3 // 4
    image = (rng.random((height, args.image_size, 3)) * 255).astype(np.uint8)
    masks = len(with_heads.generate(image))
    print(
        f"sam2.1-tiny, {args.image_size} px, image {args.image_size}x{height}, {args.points_per_side}^2 points "
        f"({masks} masks), CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    medians = interleaved_medians(
        {"with": lambda: with_heads.generate(image), "without": lambda: without_heads.generate(image)},
        args.repeats,
        warmup=1,
    )
    print(f"generator without heads: {medians['without']:.3f} s")
    print(f"generator with nine heads: {medians['with']:.3f} s")
    print(f"with heads / without heads: {medians['with'] / medians['without']:.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
