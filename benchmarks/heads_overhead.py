"""Cost of UncertainSAM's nine heads on top of SAM2's predict, and fused heads vs nine separate MLP calls.

Runs sam2.1 tiny at its real 1024-pixel size (random weights: speed does not depend on the values) on the CPU with
the image already set, and prints for 1 prompt and for 16 prompts the median time of
  - SAM2ImagePredictor.predict alone (UncertainSAM.predict_masks: the same inference context as predict),
  - UncertainSAM.predict without heads (token hooks + entropy),
  - UncertainSAM.predict with all nine heads,
  - the same and reading result.entropy (computed on first access),
and the ratios: with heads / without heads (the cost of the heads), with heads / SAM2 alone (everything usam
adds to a call), and with heads and entropy / SAM2 alone. Runs are interleaved (one of each per round) so drifts
of the machine hit all variants alike.

    .venv/bin/python benchmarks/heads_overhead.py [--repeats 101] [--repeats-batched 31] [--threads 2]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

from usam import sam2_adapter
from usam.head_table import HEAD_NAMES
from usam.heads import random_heads
from usam.predictor import UncertainSAM, head_features
from usam.runtime import interleaved_medians


def _interleaved(*functions, repeats: int) -> list[float]:
    """Median seconds of each function, in interleaved rounds after one warm-up round."""
    return list(interleaved_medians(dict(enumerate(functions)), repeats).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=101, help="timed runs per variant (1 prompt)")
    parser.add_argument("--repeats-batched", type=int, default=31, help="timed runs per variant (16 prompts)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    sam_model = sam2_adapter.build_sam2_model("sam2.1-tiny", device="cpu", random_weights=True)
    predictor = sam2_adapter.make_image_predictor(sam_model)
    model = UncertainSAM(predictor, random_heads(HEAD_NAMES))
    without_heads = UncertainSAM(predictor)
    rng = np.random.default_rng(0)
    image = (rng.random((768, 1024, 3)) * 255).astype(np.uint8)
    model.set_image(image)  # sets the image on the shared predictor: all variants reuse the embedding
    without_heads.set_image(image)
    print(f"sam2.1-tiny, 1024 px, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")

    for num_prompts, repeats in ((1, args.repeats), (16, args.repeats_batched)):
        if num_prompts == 1:
            prompt = {"point_coords": np.array([[400.0, 300.0]]), "point_labels": np.array([1])}
        else:
            points = rng.uniform([0, 0], [1023, 767], size=(num_prompts, 1, 2))
            prompt = {"point_coords": points, "point_labels": np.ones((num_prompts, 1))}
        sam2, no_heads, nine_heads, with_entropy = _interleaved(
            lambda prompt=prompt: without_heads.predict_masks(**prompt),
            lambda prompt=prompt: without_heads.predict(**prompt),
            lambda prompt=prompt: model.predict(**prompt),
            lambda prompt=prompt: model.predict(**prompt).entropy,
            repeats=repeats,
        )
        print(
            f"{num_prompts:>2} prompt(s): SAM2 {sam2 * 1e3:.1f} ms | usam without heads {no_heads * 1e3:.1f} ms | "
            f"with nine heads {nine_heads * 1e3:.1f} ms | + entropy {with_entropy * 1e3:.1f} ms  (median of {repeats})"
        )
        print(
            f"    ratios: heads/no heads {nine_heads / no_heads:.4f} | heads/SAM2 {nine_heads / sam2:.4f} | "
            f"heads+entropy/SAM2 {with_entropy / sam2:.4f}"
        )

    # Fused heads vs nine separate MLP modules, on the same features (3 masks and 48 masks).
    heads = model.heads
    separate = []
    for name in heads.names:
        state = heads.head_state_dict(name)
        mlp = torch.nn.Sequential(
            torch.nn.Linear(512, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 1),
            torch.nn.Sigmoid(),
        )
        mlp.load_state_dict(
            {
                "0.weight": state["layers.0.weight"],
                "0.bias": state["layers.0.bias"],
                "2.weight": state["layers.1.weight"],
                "2.bias": state["layers.1.bias"],
                "4.weight": state["layers.2.weight"],
                "4.bias": state["layers.2.bias"],
            }
        )
        separate.append(mlp.eval())
    for num_prompts in (1, 16):
        iou_token = torch.randn(num_prompts, 256)
        mask_tokens = torch.randn(num_prompts, 4, 256)
        index = torch.arange(1, 4).expand(num_prompts, -1)
        features = head_features(iou_token, mask_tokens, index, ["iou_token", "mask_token"])
        with torch.no_grad():
            fused, nine = _interleaved(
                lambda features=features: heads(features),
                lambda features=features: [mlp(features) for mlp in separate],
                repeats=201,
            )
        print(
            f"{num_prompts:>2} prompt(s), {features.shape[0]} masks: fused heads {fused * 1e3:.3f} ms | "
            f"nine separate MLPs {nine * 1e3:.3f} ms | speed-up {nine / fused:.2f}x"
        )


if __name__ == "__main__":
    main()
