"""SAM2's own scalar signals for a mask, and the per-mask signal vector that signal-reading heads take.

One decoder call computes, for each of its four mask tokens (token 0: the single-mask output, tokens 1-3: the
multimask outputs), a mask and a predicted IoU, and for the prompt one object-score logit. Per prompt usam keeps
(:class:`PromptSignals`, the store's signal columns):

- ``token_sam_scores`` (4): SAM's predicted IoU of each token's mask (the iou prediction head's output);
- ``object_score_logit``: the object-score logit (SAM2 returns 10 when its config has no object-score head);
- ``token_entropies`` (4): the mask entropy H_Std of each token's low-resolution logits (:mod:`usam.entropy`);
- ``token_area_fractions`` (4): the share of low-resolution pixels whose logit is above SAM2's mask threshold 0;
- ``token_stabilities`` (4): the stability score of each token's low-resolution logits, as
  ``sam2.utils.amg.calculate_stability_score`` defines it with SAM2's defaults (mask threshold 0, offset 1): the
  IoU of the masks thresholded at +1 and at -1; 1.0 where the -1 mask is empty (there SAM2's function divides 0
  by 0; 1.0 is what SAM2's decoder uses for its own stability check).

All are computed from the decoder's low-resolution logits (256 x 256 for 1024-pixel models), so they do not depend
on the image's resolution. :func:`signal_features` turns them into the vector a head reads for one mask: the
mask's own values, then the prompt's context (:data:`SIGNAL_NAMES`). The mask's "own" token is the one the heads
read for it (the producing token under the true pairing), exactly as for the mask token, so the vector means the
same in the store (the best mask's token) and at inference (each returned mask's token), for multimask and
single-mask calls alike.

This module is model-agnostic: it works on tensors; :mod:`usam.sam2_adapter` captures them from SAM2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from usam.entropy import mask_entropy
from usam.errors import InvalidInputError

MASK_THRESHOLD = 0.0
"""SAM2's mask threshold on logits (``SAM2ImagePredictor(mask_threshold=0.0)``)."""
STABILITY_OFFSET = 1.0
"""SAM2's stability score offset (``SAM2AutomaticMaskGenerator(stability_score_offset=1.0)``)."""
NUM_TOKENS = 4
"""Mask tokens of a SAM2 decoder call, and so values of each per-token signal."""

_PER_TOKEN = ("sam_score", "entropy", "area_fraction", "stability")
SIGNAL_NAMES: tuple[str, ...] = (
    *(f"own_{name}" for name in _PER_TOKEN),
    *(f"own_is_token_{token}" for token in range(NUM_TOKENS)),
    *(f"token_{token}_sam_score" for token in range(NUM_TOKENS)),
    "object_score_logit",
    *(f"token_{token}_{name}" for name in _PER_TOKEN[1:] for token in range(NUM_TOKENS)),
)
"""The values of a mask's signal vector, in order: the mask's own SAM score, H_Std, area fraction and stability
(of the token the heads read for it), which of the four tokens that is (one-hot), then the prompt's context: the
four tokens' SAM scores, the object-score logit, and the four tokens' H_Std, area fractions and stabilities."""
SIGNAL_DIM = len(SIGNAL_NAMES)
"""Length of a mask's signal vector (25)."""


@dataclasses.dataclass(frozen=True)
class PromptSignals:
    """The scalar signals of the prompts of one decoder call; field names are the store's column names.

    Attributes:
        token_sam_scores: (B, 4) SAM's predicted IoU of each token's mask.
        object_score_logit: (B,) the object-score logit.
        token_entropies: (B, 4) H_Std in bits of each token's mask.
        token_area_fractions: (B, 4) share of the low-resolution pixels inside each token's mask.
        token_stabilities: (B, 4) stability score of each token's mask.
    """

    token_sam_scores: torch.Tensor
    object_score_logit: torch.Tensor
    token_entropies: torch.Tensor
    token_area_fractions: torch.Tensor
    token_stabilities: torch.Tensor

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> PromptSignals:
        """Signals from arrays keyed by field name, e.g. a store table's columns or :meth:`as_arrays`' output.

        Per-token values may come flat (B, 4) or with any leading shape; they are reshaped to (B, 4).
        """
        values = {field.name: torch.from_numpy(np.array(arrays[field.name], dtype=np.float32)) for field in _FIELDS}
        for name, tensor in values.items():
            if name == "object_score_logit":
                values[name] = tensor.reshape(-1)
                continue
            if tensor.ndim == 0 or tensor.shape[-1] != NUM_TOKENS:
                raise InvalidInputError(
                    f"{name} has {tensor.shape[-1] if tensor.ndim else 1} values per prompt; SAM2's signals have one "
                    f"per mask token of its {NUM_TOKENS}"
                )
            values[name] = tensor.reshape(-1, NUM_TOKENS)
        return cls(**values)

    def as_arrays(self) -> dict[str, np.ndarray]:
        """Field name -> float32 numpy array owned by the caller (what a store row or a result holds)."""
        return {field.name: getattr(self, field.name).detach().float().cpu().numpy().copy() for field in _FIELDS}


_FIELDS = dataclasses.fields(PromptSignals)
SIGNAL_FIELDS: tuple[str, ...] = tuple(field.name for field in _FIELDS)
"""The fields of :class:`PromptSignals`, which are also the store's signal columns."""


def stability_scores(
    logits: torch.Tensor, mask_threshold: float = MASK_THRESHOLD, offset: float = STABILITY_OFFSET
) -> torch.Tensor:
    """SAM2's stability score of each mask: IoU of the masks thresholded at ``threshold + offset`` and ``- offset``.

    Equal to ``sam2.utils.amg.calculate_stability_score(logits, mask_threshold, offset)`` wherever the lower mask
    is not empty; 1.0 where it is (SAM2's function gives 0/0 there).

    Args:
        logits: (..., H, W) mask logits.
        mask_threshold: SAM2's mask threshold.
        offset: SAM2's stability score offset.

    Returns:
        (...) float32 scores in [0, 1].
    """
    # Counting in int32 as SAM2 does keeps the division the same float32 operation.
    intersections = (logits > (mask_threshold + offset)).sum(dim=(-2, -1), dtype=torch.int32)
    unions = (logits > (mask_threshold - offset)).sum(dim=(-2, -1), dtype=torch.int32)
    return torch.where(unions > 0, intersections / unions.clamp(min=1), torch.ones((), device=logits.device)).float()


def area_fractions(logits: torch.Tensor, mask_threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """The share of pixels of each mask whose logit is above the mask threshold, (..., H, W) -> (...)."""
    return (logits > mask_threshold).float().mean(dim=(-2, -1))


def prompt_signals(
    token_sam_scores: torch.Tensor, object_score_logits: torch.Tensor, token_logits: torch.Tensor
) -> PromptSignals:
    """The signals of B prompts from what one decoder call computed.

    Args:
        token_sam_scores: (B, 4) predicted IoU of every token's mask.
        object_score_logits: (B,) or (B, 1) object-score logits.
        token_logits: (B, 4, h, w) low-resolution mask logits of every token.

    Returns:
        The signals, float32, on the tensors' device.
    """
    logits = token_logits.float()
    return PromptSignals(
        token_sam_scores=token_sam_scores.float().reshape(-1, NUM_TOKENS),
        object_score_logit=object_score_logits.float().reshape(-1),
        token_entropies=mask_entropy(logits),
        token_area_fractions=area_fractions(logits),
        token_stabilities=stability_scores(logits),
    )


def signal_features(signals: PromptSignals, token_index: torch.Tensor) -> torch.Tensor:
    """The signal vector (:data:`SIGNAL_NAMES`) of every mask, as (B * M, SIGNAL_DIM) float32.

    Args:
        signals: The B prompts' signals.
        token_index: (B, M) the token the heads read for each of a prompt's M masks (see
            :func:`usam.predictor.head_token_indices`; in a store, the best mask's token).
    """
    batch, masks = token_index.shape
    token_index = token_index.to(signals.token_sam_scores.device).long()
    per_token = torch.stack(
        [signals.token_sam_scores, signals.token_entropies, signals.token_area_fractions, signals.token_stabilities],
        dim=-1,
    ).float()  # (B, 4, 4): token, signal
    own = per_token.gather(1, token_index.unsqueeze(-1).expand(batch, masks, len(_PER_TOKEN)))
    one_hot = torch.nn.functional.one_hot(token_index, NUM_TOKENS).to(own.dtype)
    context = torch.cat(
        [
            signals.token_sam_scores.float(),
            signals.object_score_logit.float().reshape(batch, 1),
            signals.token_entropies.float(),
            signals.token_area_fractions.float(),
            signals.token_stabilities.float(),
        ],
        dim=1,
    )
    vectors = torch.cat([own, one_hot, context.unsqueeze(1).expand(batch, masks, context.shape[1])], dim=-1)
    return vectors.reshape(batch * masks, SIGNAL_DIM)


MIN_SIGNAL_STD = 1e-3
"""Smallest standard deviation a signal is divided by: a signal that never changes (e.g. SAM2's constant
object-score logit of a config without an object-score head) becomes 0 instead of dividing by 0."""


@dataclasses.dataclass(frozen=True)
class SignalNormalization:
    """Per-value mean and standard deviation that standardise signal vectors; heads files store it.

    Attributes:
        mean: :data:`SIGNAL_DIM` means.
        std: :data:`SIGNAL_DIM` standard deviations, at least :data:`MIN_SIGNAL_STD`.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != SIGNAL_DIM or len(self.std) != SIGNAL_DIM:
            raise ValueError(f"mean and std need {SIGNAL_DIM} values each, got {len(self.mean)} and {len(self.std)}")
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(self.std)) or min(self.std) <= 0:
            raise ValueError("mean and std must be finite and std positive")

    @classmethod
    def fit(cls, vectors: np.ndarray) -> SignalNormalization:
        """The normalisation of some rows' signal vectors ``(N, SIGNAL_DIM)``; non-finite rows are ignored."""
        vectors = np.asarray(vectors, dtype=np.float64)
        finite = vectors[np.isfinite(vectors).all(axis=1)]
        if finite.size == 0:
            return cls((0.0,) * SIGNAL_DIM, (1.0,) * SIGNAL_DIM)
        std = np.maximum(finite.std(axis=0), MIN_SIGNAL_STD)
        return cls(tuple(finite.mean(axis=0).tolist()), tuple(std.tolist()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignalNormalization:
        """From :meth:`to_dict`'s form (a heads file's ``signal_normalization``)."""
        return cls(tuple(float(value) for value in data["mean"]), tuple(float(value) for value in data["std"]))

    def to_dict(self) -> dict[str, list[float]]:
        """``{"mean": [...], "std": [...]}`` for a heads file's metadata."""
        return {"mean": list(self.mean), "std": list(self.std)}

    def apply(self, vectors: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Standardised vectors, ``(vectors - mean) / std``, of the same kind (tensor or array) and float32."""
        if isinstance(vectors, torch.Tensor):
            mean = torch.tensor(self.mean, dtype=torch.float32, device=vectors.device)
            std = torch.tensor(self.std, dtype=torch.float32, device=vectors.device)
            return (vectors.float() - mean) / std
        return ((np.asarray(vectors, dtype=np.float32) - np.float32(self.mean)) / np.float32(self.std)).astype(
            np.float32
        )
