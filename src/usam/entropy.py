"""Mask entropy H_Std of the UncertainSAM paper, and per-pixel uncertainty maps.

For mask logits x: p = sigmoid(x) clipped to [1e-6, 1 - 1e-6]; the per-pixel binary entropy in bits is
h = -p log2 p - (1 - p) log2(1 - p); the mask entropy is the foreground-weighted mean H = sum(p h) / sum(p).
Monte Carlo entropies (over models, prompts, augmentations, masks) average probability maps first and then
apply :func:`entropy_from_probabilities` to the mean map.
"""

from __future__ import annotations

import math

import torch

PROBABILITY_EPSILON = 1e-6
"""Probabilities are clipped to [eps, 1 - eps] before taking logarithms."""

# Clipping p to [eps, 1 - eps] is clipping the logit to [-L, L]. Working on logits keeps both p and 1 - p exact
# in float32 (1 - p computed as sigmoid(-x), not by subtraction, which loses the small side near p = 1).
_LOGIT_LIMIT = math.log((1.0 - PROBABILITY_EPSILON) / PROBABILITY_EPSILON)
_LN2 = math.log(2.0)


def _clipped_logit_terms(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground probabilities p and per-pixel entropies h (bits) of clipped logits."""
    clipped = logits.float().clamp(-_LOGIT_LIMIT, _LOGIT_LIMIT)
    foreground = torch.sigmoid(clipped)
    background = torch.sigmoid(-clipped)
    entropy = -(
        foreground * torch.nn.functional.logsigmoid(clipped) + background * torch.nn.functional.logsigmoid(-clipped)
    )
    return foreground, entropy / _LN2


def pixel_entropy_from_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary entropy in bits of foreground probabilities (clipped as in the paper)."""
    p = probabilities.clamp(PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
    q = 1.0 - p
    return -(p * torch.log2(p) + q * torch.log2(q))


def pixel_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary entropy in bits of mask logits, in [0, 1]; same shape as ``logits``."""
    # Rounding can put p = 0.5 a hair above one bit; maps are drawn on a fixed [0, 1] scale.
    return _clipped_logit_terms(logits)[1].clamp_(max=1.0)


def entropy_from_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """Mask entropy H = sum(p h) / sum(p) over the last two (spatial) dimensions.

    Args:
        probabilities: (..., H, W) foreground probabilities, e.g. a Monte Carlo mean of several masks.

    Returns:
        (...) entropies in bits, in [0, 1].
    """
    p = probabilities.float().clamp(PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
    q = 1.0 - p
    weighted = -(p * (p * torch.log2(p) + q * torch.log2(q)))
    return weighted.sum(dim=(-2, -1)) / p.sum(dim=(-2, -1))


def mask_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The paper's H_Std of each mask: :func:`entropy_from_probabilities` of ``sigmoid(logits)``.

    Args:
        logits: (..., H, W) mask logits, e.g. SAM2's 256 x 256 low-resolution logits.

    Returns:
        (...) entropies in bits.
    """
    foreground, entropy = _clipped_logit_terms(logits)
    return (foreground * entropy).sum(dim=(-2, -1)) / foreground.sum(dim=(-2, -1))
