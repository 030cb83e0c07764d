"""Cost of usam's per-frame estimates on top of SAM2's video propagation.

Builds sam2.1 tiny's config (random weights: speed does not depend on the values) as a ``SAM2VideoPredictor``,
writes a few generated JPEG frames, prompts the objects on frame 0 and times ``propagate_in_video`` over all frames:
  - SAM2's own predictor alone,
  - ``UncertainVideoSAM`` with all nine heads (token hooks, heads fused per frame, entropy, SAM2's IoU and score),
each round on a fresh inference state prompted the same way (state set-up and prompts are not timed). Rounds are
interleaved (one of each per round) so drifts of the machine hit both alike; the result is the median ratio.

    .venv/bin/python benchmarks/video_overhead.py [--image-size 1024] [--frames 6] [--objects 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from usam import sam2_adapter
from usam.head_table import HEAD_NAMES
from usam.heads import random_heads
from usam.sam2_adapter.video import build_video_predictor
from usam.video import UncertainVideoSAM


def write_frames(folder: Path, count: int, size: tuple[int, int] = (540, 960)) -> None:
    """``count`` frames in which a few textured blocks move, as SAM2 reads them (``00000.jpg``, ...)."""
    rng = np.random.default_rng(0)
    background = (rng.random((*size, 3)) * 80).astype(np.uint8)
    for index in range(count):
        frame = background.copy()
        frame[150:350, 200 + 12 * index : 420 + 12 * index] = (210, 50, 40)
        frame[60:160, 600 - 8 * index : 720 - 8 * index] = (40, 190, 60)
        Image.fromarray(frame).save(folder / f"{index:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=1024, help="SAM2 input size (1024 as released)")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--objects", type=int, default=2, choices=[1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    overrides = [] if args.image_size == 1024 else sam2_adapter.small_model_overrides(args.image_size, False)
    predictor = build_video_predictor("sam2.1-tiny", device="cpu", random_weights=True, hydra_overrides=overrides)
    model = UncertainVideoSAM(predictor, random_heads(HEAD_NAMES))
    prompts = [
        {"obj_id": 1, "points": [[300.0, 250.0]], "labels": [1]},
        {"obj_id": 2, "box": [600.0, 60.0, 720.0, 160.0]},
    ][: args.objects]

    def plain() -> float:
        state = predictor.init_state(folder)
        for prompt in prompts:
            predictor.add_new_points_or_box(state, 0, **prompt)
        started = time.perf_counter()
        for _ in predictor.propagate_in_video(state):
            pass
        return time.perf_counter() - started

    def with_heads() -> float:
        state = model.init_state(folder)
        for prompt in prompts:
            model.add_new_points_or_box(state, 0, **prompt)
        started = time.perf_counter()
        for _ in model.propagate_in_video(state):
            pass
        return time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="usam-video-bench-") as temporary:
        folder = temporary
        write_frames(Path(folder), args.frames)
        times: dict[str, list[float]] = {"SAM2": [], "usam": []}
        # SAM2 draws progress bars on stderr; keep the output to the figures.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            plain(), with_heads()  # warm-up round
            for _ in range(args.repeats):
                times["SAM2"].append(plain())
                times["usam"].append(with_heads())
    ratios = [ours / theirs for ours, theirs in zip(times["usam"], times["SAM2"], strict=True)]
    sam2, usam = statistics.median(times["SAM2"]), statistics.median(times["usam"])
    print(
        f"sam2.1-tiny config, {args.image_size} px, {args.frames} frames x {args.objects} objects, CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"propagation: SAM2 {sam2:.2f} s ({sam2 / args.frames * 1e3:.0f} ms/frame) | usam with nine heads "
        f"{usam:.2f} s ({usam / args.frames * 1e3:.0f} ms/frame)  (median of {args.repeats})"
    )
    print(
        f"overhead ratio usam/SAM2: median of per-round ratios {statistics.median(ratios):.4f}, ratio of medians "
        f"{usam / sam2:.4f} (per round: {', '.join(f'{ratio:.3f}' for ratio in ratios)})"
    )


if __name__ == "__main__":
    main()
