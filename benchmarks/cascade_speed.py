"""Seconds per object of the model cascade against the small and the large model alone (random weights).

Runs sam2.1 tiny and large with random weights and random heads on one image: small only, large only, and the
cascade at a few thresholds of ``iou:τ`` (the share escalated grows with τ). Each configuration encodes the image
and predicts the objects, so the cascade pays the large encoding only when something escalates. With random weights
the accuracy means nothing: this measures cost only; rerun on the test-bed models for accuracy.

    python benchmarks/cascade_speed.py [--objects 8] [--image-size 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from usam import UncertainSAM, random_heads, sam2_adapter
from usam.uses import CascadeSAM


def build(name: str, image_size: int, seed: int) -> UncertainSAM:
    overrides = [] if image_size == 1024 else sam2_adapter.small_model_overrides(image_size, small_trunk=False)
    model = sam2_adapter.build_sam2_model(name, device="cpu", random_weights=True, seed=seed, hydra_overrides=overrides)
    heads = random_heads(["iou_tiny", "iou_large", "model_gap"], seed=seed, sam2_version="sam2.1")
    return UncertainSAM(sam2_adapter.make_image_predictor(model), heads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = (rng.random((768, 1024, 3)) * 255).astype(np.uint8)
    points = rng.uniform([0, 0], [1023, 767], (args.objects, 1, 2)).astype(np.float32)
    labels = np.ones((args.objects, 1), np.int32)
    tiny, large = build("sam2.1-tiny", args.image_size, 0), build("sam2.1-large", args.image_size, 1)

    def timed(run) -> tuple[float, float]:
        times, share = [], 0.0
        for _ in range(args.repeats):
            start = time.perf_counter()
            share = run()
            times.append(time.perf_counter() - start)
        return statistics.median(times) / args.objects, share

    def alone(model: UncertainSAM) -> float:
        model.set_image(image)
        model.predict(point_coords=points, point_labels=labels)
        return 0.0

    rows = [("small only", *timed(lambda: alone(tiny))), ("large only", *timed(lambda: alone(large)))]
    for threshold in (0.0, 0.4, 0.5, 0.6, 1.0):
        cascade = CascadeSAM(tiny, large, f"iou:{threshold}")

        def run(cascade=cascade) -> float:
            cascade.set_image(image)
            return cascade.predict(point_coords=points, point_labels=labels).escalated_fraction

        rows.append((f"cascade iou:{threshold}", *timed(run)))
    small_cost = rows[0][1]
    print(f"{args.objects} objects, {args.image_size} px, median of {args.repeats} (random weights: cost only)")
    for name, seconds, share in rows:
        print(f"{name:>20}: {seconds:.3f} s/object ({seconds / small_cost:.2f}x small), escalated {share:.0%}")


if __name__ == "__main__":
    main()
