"""Cost of heads that read SAM2's scalar signals, against token-only heads, on top of SAM2's predict.

Runs sam2.1 tiny (random weights: speed does not depend on the values) on the CPU with the image already set, and
prints the median time of one ``predict`` call with 1 and with 16 prompts for
  - SAM2ImagePredictor.predict alone (UncertainSAM.predict_masks),
  - UncertainSAM.predict with nine token heads (the paper's inputs),
  - UncertainSAM.predict with nine ``tokens+signals`` heads (signals captured and computed in the same call),
and the ratios signals / tokens and signals / SAM2. Runs are interleaved (one of each per round).

    .venv/bin/python benchmarks/signals_overhead.py [--image-size 1024] [--repeats 51] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings

import numpy as np
import torch

from usam import sam2_adapter
from usam.head_table import HEAD_NAMES
from usam.heads import INPUTS_OF_VARIANT, InputsVariant, UncertaintyHeads, random_heads
from usam.predictor import UncertainSAM
from usam.runtime import interleaved_medians
from usam.signals import SIGNAL_DIM, SignalNormalization


def signal_heads() -> UncertaintyHeads:
    """Nine random heads that read tokens and signals (their numbers mean nothing; their cost is real)."""
    metadata = dataclasses.replace(
        random_heads(HEAD_NAMES).metadata,
        inputs=list(INPUTS_OF_VARIANT[InputsVariant.TOKENS_SIGNALS]),
        signal_normalization=SignalNormalization((0.0,) * SIGNAL_DIM, (1.0,) * SIGNAL_DIM).to_dict(),
    )
    heads = UncertaintyHeads(metadata)
    heads.reset_parameters(torch.Generator().manual_seed(0))
    return heads.eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=1024, help="the model's input size (default 1024)")
    parser.add_argument("--repeats", type=int, default=51, help="timed runs per variant and prompt count")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    overrides = [] if args.image_size == 1024 else sam2_adapter.small_model_overrides(args.image_size, False)
    sam_model = sam2_adapter.build_sam2_model(
        "sam2.1-tiny", device="cpu", random_weights=True, hydra_overrides=overrides
    )
    predictor = sam2_adapter.make_image_predictor(sam_model)
    tokens = UncertainSAM(predictor, random_heads(HEAD_NAMES))
    signals = UncertainSAM(predictor, signal_heads())
    rng = np.random.default_rng(0)
    side = args.image_size
    tokens.set_image((rng.random((side * 3 // 4, side, 3)) * 255).astype(np.uint8))
    print(f"sam2.1-tiny, {side} px, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for num_prompts in (1, 16):
        points = rng.uniform([0, 0], [side - 1, side * 3 // 4 - 1], size=(num_prompts, 1, 2))
        prompt = {"point_coords": points, "point_labels": np.ones((num_prompts, 1))}
        medians = interleaved_medians(
            {
                "sam2": lambda prompt=prompt: tokens.predict_masks(**prompt),
                "tokens": lambda prompt=prompt: tokens.predict(**prompt),
                "signals": lambda prompt=prompt: signals.predict(**prompt),
            },
            args.repeats,
        )
        print(
            f"{num_prompts:2d} prompt(s): SAM2 {medians['sam2'] * 1e3:.1f} ms, token heads "
            f"{medians['tokens'] * 1e3:.1f} ms, tokens+signals heads {medians['signals'] * 1e3:.1f} ms; "
            f"signals/tokens {medians['signals'] / medians['tokens']:.3f}, "
            f"signals/SAM2 {medians['signals'] / medians['sam2']:.3f}"
        )


if __name__ == "__main__":
    main()
