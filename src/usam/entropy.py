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
    """Foreground probabilities p and per-pixel entropies h times ln 2 (nats) of clipped logits.

    With e = exp(-x): p = 1 / (1 + e), 1 - p = e p, and h ln 2 = log(1 + e) + x (1 - p), which follows from
    log p = -log(1 + e) and log(1 - p) = -x - log(1 + e). One exp and one log1p per pixel, fewer passes over the
    masks than sigmoid and two logarithms: this sits on the prediction path.
    """
    clipped = logits.float().clamp(-_LOGIT_LIMIT, _LOGIT_LIMIT)
    exp_negative = torch.exp(-clipped)
    foreground = (exp_negative + 1.0).reciprocal_()
    background = exp_negative * foreground
    entropy_nats = exp_negative.log1p_().addcmul_(clipped, background)
    return foreground, entropy_nats


def pixel_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary entropy in bits of mask logits, in [0, 1]; same shape as ``logits``."""
    # Rounding can put p = 0.5 a hair above one bit; maps are drawn on a fixed [0, 1] scale.
    return _clipped_logit_terms(logits)[1].div_(_LN2).clamp_(max=1.0)


def entropy_from_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """Mask entropy H = sum(p h) / sum(p) over the last two (spatial) dimensions.

    Args:
        probabilities: (..., H, W) foreground probabilities, e.g. a Monte Carlo mean of several masks.

    Returns:
        (...) entropies in bits, in [0, 1].
    """
    # float64: in float32, 1 - p loses most of its digits for p near 1 (and 1 - 1e-6 is not representable).
    p = probabilities.double().clamp(PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
    q = 1.0 - p
    weighted = -(p * (p * torch.log2(p) + q * torch.log2(q)))
    return (weighted.sum(dim=(-2, -1)) / p.sum(dim=(-2, -1))).to(torch.float32)


def mask_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The paper's H_Std of each mask: :func:`entropy_from_probabilities` of ``sigmoid(logits)``.

    Args:
        logits: (..., H, W) mask logits, e.g. SAM2's 256 x 256 low-resolution logits.

    Returns:
        (...) entropies in bits.
    """
    foreground, entropy_nats = _clipped_logit_terms(logits)
    return (foreground * entropy_nats).sum(dim=(-2, -1)) / (foreground.sum(dim=(-2, -1)) * _LN2)
