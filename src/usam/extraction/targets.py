"""Training targets and Monte Carlo entropy baselines, from SAM2's outputs (model-agnostic).

Per (image, object, model) the extraction keeps the IoU of each of SAM's three masks with the truth and derives:
``iou`` (best of three), ``unsupervised_iou`` (the mask with SAM's highest score), ``iou_dense_prompt`` and the gaps
``model_gap = iou(large) - iou(tiny)``, ``prompt_gap = iou_dense_prompt - iou``, ``task_gap = iou - unsupervised_iou``.

The Monte Carlo entropies average probability maps (sigmoid of the low-resolution logits) over samples and take
the mask entropy of the mean (:func:`usam.entropy.entropy_from_probabilities`). A sample is a (model, image
version, prompt) triple; within a sample the paper takes the mask that is best against the truth, and the
``*_sam_pick`` variants take SAM's own pick instead (what a deployed system can do):

- ``h_std``: the picked mask of the center prompt on the unchanged image;
- ``h_theta``: mean over models (same value for every model row of an object);
- ``h_prompt``: mean over the eight single-point prompts (center + 7 extra);
- ``h_augmentation``: mean over the five image versions (center prompt);
- ``h_task``: SAM's three masks of the center prompt weighted by their scores normalised to sum 1 (no pick);
- ``h_all``: every mask of every (model, image version, prompt) sample, weighted by
  1/|models| · 1/|images| · 1/|prompts| times its normalised SAM score (the weights sum to 1). No pick is involved,
  so ``h_all_sam_pick`` equals ``h_all``; it is stored so that every ``*_sam_pick`` measure exists.
"""

from __future__ import annotations

import numpy as np
import torch

from usam.entropy import entropy_from_probabilities, mask_entropy
from usam.presets import TieRule


def mask_ious(masks: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of each mask with the truth at full resolution.

    Args:
        masks: (..., K, H, W) boolean masks.
        truth: (..., H, W) boolean ground truth, broadcast over K.

    Returns:
        (..., K) IoUs; 1.0 where mask and truth are both empty.
    """
    masks = np.asarray(masks, dtype=bool)
    truth = np.asarray(truth, dtype=bool)[..., None, :, :]
    intersection = np.logical_and(masks, truth).sum(axis=(-2, -1))
    union = masks.sum(axis=(-2, -1)) + truth.sum(axis=(-2, -1)) - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0).astype(np.float32)


def best_output(mask_ious: np.ndarray, tie_rule: TieRule | str = TieRule.FIRST) -> np.ndarray:
    """Index of the output that is best against the truth, per row; NaN counts as worst.

    This is the one definition of "the best mask" that extraction, training and evaluation share.

    Args:
        mask_ious: ``(..., K)`` IoU of each output with the truth.
        tie_rule: Which of several equally good outputs wins: the first (usam) or the last (the authors' code).

    Returns:
        ``(...)`` int64 indices into the last axis.

    Example:
        >>> ious = np.array([[0.5, 0.9, 0.9], [np.nan, 0.2, 0.1]])
        >>> best_output(ious).tolist(), best_output(ious, "last").tolist()
        ([1, 1], [2, 1])
    """
    scores = np.where(np.isnan(mask_ious), -np.inf, np.asarray(mask_ious, dtype=np.float64))
    if TieRule(tie_rule) is TieRule.LAST:
        last = scores.shape[-1] - 1
        return (last - np.argmax(scores[..., ::-1], axis=-1)).astype(np.int64)
    return np.argmax(scores, axis=-1).astype(np.int64)


def normalized_scores(sam_scores: torch.Tensor) -> torch.Tensor:
    """SAM's scores of the masks of a sample, clipped at 0 and normalised to sum 1 (uniform if all are 0)."""
    scores = sam_scores.float().clamp(min=0.0)
    total = scores.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(scores, 1.0 / scores.shape[-1])
    return torch.where(total > 0, scores / total.clamp(min=1e-12), uniform)


def picked(probabilities: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The probability map of the chosen mask of each sample: (..., K, h, w) and (...) -> (..., h, w)."""
    gather_index = index.long()[..., None, None, None].expand(*index.shape, 1, *probabilities.shape[-2:])
    return probabilities.gather(-3, gather_index).squeeze(-3)


class MonteCarloEntropies:
    """Accumulates the probability maps of one object's Monte Carlo samples and reports the paper's entropies.

    Feed it, for every model and image version, the outputs of the eight single-point prompts (the center prompt
    first; image version 0 is the unchanged image) with :meth:`add`; then read :meth:`entropies`.

    Args:
        models: Names of all models of the object, in any order.
        num_images: Number of image versions (1 without the augmentation part).
        num_prompts: Number of single-point prompts (1 without the prompt part).
        tie_rule: Which of equally good masks is the best one (see :func:`best_output`).
    """

    def __init__(
        self, models: list[str], num_images: int, num_prompts: int, tie_rule: TieRule | str = TieRule.FIRST
    ) -> None:
        self.models = list(models)
        self.tie_rule = TieRule(tie_rule)
        self.num_images = num_images
        self.num_prompts = num_prompts
        self._sums: dict[tuple[str, ...], torch.Tensor] = {}
        self._task: dict[str, torch.Tensor] = {}
        self._standard: dict[tuple[str, str], torch.Tensor] = {}  # (model, pick) -> H_Std

    def _accumulate(self, key: tuple[str, ...], value: torch.Tensor) -> None:
        self._sums[key] = self._sums[key] + value if key in self._sums else value.clone()

    def add(
        self,
        model: str,
        image_index: int,
        logits: torch.Tensor,
        sam_scores: torch.Tensor,
        mask_ious: torch.Tensor,
    ) -> None:
        """Add the samples of one model on one image version.

        Args:
            model: The model's name.
            image_index: 0 for the unchanged image.
            logits: (P, 3, h, w) low-resolution mask logits of the P single-point prompts (center first).
            sam_scores: (P, 3) SAM's scores.
            mask_ious: (P, 3) IoUs with the truth.
        """
        # float64: near-certain pixels keep their small side (1 - p) exact through the averaging.
        probabilities = torch.sigmoid(logits.double())
        weights = normalized_scores(sam_scores).double()
        best = torch.from_numpy(best_output(mask_ious.numpy(), self.tie_rule))
        sam_pick = sam_scores.argmax(-1)  # SAM's own pick, as SAM2 chooses a mask for its user
        picks = {"best": picked(probabilities, best), "sam": picked(probabilities, sam_pick)}
        sample_weight = 1.0 / (len(self.models) * self.num_images * self.num_prompts)
        mixture = (weights[..., None, None] * probabilities).sum(dim=-3)  # (P, h, w): SAM-score-weighted masks
        self._accumulate(("all",), sample_weight * mixture.sum(dim=0))
        for variant, maps in picks.items():
            self._accumulate(("augmentation", model, variant), maps[0] / self.num_images)
            if image_index == 0:
                self._accumulate(("prompt", model, variant), maps.mean(dim=0))
                self._accumulate(("theta", variant), maps[0] / len(self.models))
                # H_Std of the picked mask from its logits: the same number as UncertainSAM's result.entropy.
                pick = best if variant == "best" else sam_pick
                self._standard[(model, variant)] = mask_entropy(logits[0, pick[0]])
        if image_index == 0:
            self._task[model] = mixture[0]

    def entropies(self, model: str, *, monte_carlo: bool = True) -> dict[str, float | None]:
        """The entropies of the object as seen by ``model``: store column name -> value (None if not computed)."""
        values: dict[str, float | None] = {}

        def entropy(probability_map: torch.Tensor | None) -> float | None:
            return None if probability_map is None else float(entropy_from_probabilities(probability_map))

        for variant, suffix in (("best", ""), ("sam", "_sam_pick")):
            standard = self._standard.get((model, variant))
            values[f"h_std{suffix}"] = None if standard is None else float(standard)
            values[f"h_theta{suffix}"] = entropy(self._sums.get(("theta", variant)))
            values[f"h_prompt{suffix}"] = entropy(self._sums.get(("prompt", model, variant))) if monte_carlo else None
            augmentation = self._sums.get(("augmentation", model, variant)) if monte_carlo else None
            values[f"h_augmentation{suffix}"] = entropy(augmentation)
        values["h_task"] = entropy(self._task.get(model))
        values["h_all"] = entropy(self._sums.get(("all",))) if monte_carlo else None
        values["h_all_sam_pick"] = values["h_all"]
        return values
