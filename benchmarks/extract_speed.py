"""Extraction speed: usam's extractor vs a naive loop that sets the image again for every object and model.

Both produce the same rows (same prompts, same outputs; tests/test_extract.py checks that batching objects does
not change a row). usam encodes each image version once per model and batches all objects' prompts; the naive loop,
like the paper's code, re-encodes the image for every object (and every augmented version of it). Images have 4
objects each. Prints objects per second of both and their ratio, with and without the Monte Carlo part.

    .venv/bin/python benchmarks/extract_speed.py [--models sam2.1-tiny sam2.1-large] [--images 1] [--image-size 1024]

Random weights: speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from usam import sam2_adapter
from usam.datasets.base import Sample
from usam.extraction import ExtractionOptions, Extractor
from usam.predictor import UncertainSAM


def synthetic_samples(num_images: int, height: int, width: int, objects: int = 4) -> list[Sample]:
    rng = np.random.default_rng(0)
    samples = []
    for index in range(num_images):
        image = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        masks = {}
        for object_index in range(objects):
            mask = np.zeros((height, width), bool)
            top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
            mask[top : top + height // 4, left : left + width // 4] = True
            masks[str(object_index)] = mask
        samples.append(Sample(f"image{index}", image, masks, "synthetic", "bench"))
    return samples


def naive_rows(extractor: Extractor, sample: Sample) -> list[dict]:
    """One object at a time: every object pays for its own image encodings, as in the paper's code."""
    rows = []
    for object_id, mask in sample.masks.items():
        rows += extractor.rows_for_sample(Sample(sample.image_key, sample.image, {object_id: mask}, "s", "b"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sam2.1-tiny", "sam2.1-large"])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=1024, help="SAM2 input size (1024 = released models)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    overrides = [] if args.image_size == 1024 else [f"++model.image_size={args.image_size}"]
    models = {}
    for name in args.models:
        sam_model = sam2_adapter.build_sam2_model(name, device="cpu", random_weights=True, hydra_overrides=overrides)
        models[name] = UncertainSAM(sam2_adapter.make_image_predictor(sam_model))
    samples = synthetic_samples(args.images, 768 * args.image_size // 1024, args.image_size)
    objects = sum(len(sample.masks) for sample in samples)
    print(
        f"models {args.models}, {args.images} image(s) of {samples[0].image.shape[1]}x{samples[0].image.shape[0]} "
        f"with 4 objects, input size {args.image_size}, CPU, {torch.get_num_threads()} threads"
    )
    # Untimed warm-up: the first calls of a model pay one-off costs (kernel selection, allocations) that would
    # otherwise land on whichever loop runs first.
    for model in models.values():
        model.set_image(samples[0].image)
        model.predict(point_coords=[[10.0, 10.0]], point_labels=[1])
    for monte_carlo in (False, True):
        extractor = Extractor(models, ExtractionOptions(monte_carlo=monte_carlo))
        timings = {}
        for name, run in (
            ("usam", extractor.rows_for_sample),
            ("naive", lambda s, extractor=extractor: naive_rows(extractor, s)),
        ):
            started = time.perf_counter()
            rows = [row for sample in samples for row in run(sample)]
            timings[name] = time.perf_counter() - started
            assert len(rows) == objects * len(models)
        usam_rate, naive_rate = objects / timings["usam"], objects / timings["naive"]
        label = "with Monte Carlo   " if monte_carlo else "without Monte Carlo"
        print(
            f"{label}: usam {usam_rate:.3f} objects/s ({timings['usam']:.1f} s) | naive {naive_rate:.3f} objects/s "
            f"({timings['naive']:.1f} s) | ratio {usam_rate / naive_rate:.2f}x"
        )


if __name__ == "__main__":
    main()
