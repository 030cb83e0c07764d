"""``UncertainMaskGenerator``: SAM2's automatic masks ("segment everything"), each with usam's estimates.

SAM2's generator prompts a grid of points and keeps the masks that pass its thresholds and NMS. Here every mask
also carries the heads' estimates of the tokens that produced it (kept aligned through SAM2's own filtering, see
:mod:`usam.sam2_adapter.automatic`), its entropy H_Std, and the predicted IoU of one IoU head. Masks can be filtered
by that predicted IoU beside (or, with ``pred_iou_thresh=0``, in place of) SAM's score and stability thresholds, and
ranked by SAM's score, the stability score or the predicted IoU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from usam import sam2_adapter
from usam.calibration import DEFAULT_ALPHA, BoundKind, check_alpha
from usam.devices import Precision
from usam.entropy import mask_entropy
from usam.errors import HeadsFileError, InvalidInputError
from usam.head_table import HeadKind, head_spec, size_head_name
from usam.heads import UncertaintyHeads, load_heads
from usam.images import as_rgb_uint8
from usam.model_card import ModelCard
from usam.models import SAM2ModelSpec, size_and_family
from usam.predictor import call_head_features, head_token_indices
from usam.sam2_adapter import automatic as sam2_automatic
from usam.validation import StrEnum, check_choice, check_float

PREDICTED_IOU_KEY = "usam_predicted_iou"
"""Record key of usam's predicted IoU (SAM2's own records call SAM's score ``predicted_iou``)."""


class RankBy(StrEnum):
    """What orders the generator's records (highest first)."""

    SAM_SCORE = "sam_score"
    """SAM's own IoU prediction (``predicted_iou`` in SAM2's records)."""
    STABILITY_SCORE = "stability_score"
    """SAM2's stability score."""
    PREDICTED_IOU = "predicted_iou"
    """usam's predicted IoU (:data:`PREDICTED_IOU_KEY`)."""


RANK_KEYS = {RankBy.SAM_SCORE: "predicted_iou", RankBy.STABILITY_SCORE: "stability_score"}
"""Record key of each ranking, beside :data:`PREDICTED_IOU_KEY` for :attr:`RankBy.PREDICTED_IOU`."""


def rank_key(rank_by: RankBy | str) -> str:
    """The record key a ranking orders by."""
    rank_by = check_choice(RankBy, rank_by, "rank_by")
    return RANK_KEYS.get(rank_by, PREDICTED_IOU_KEY)


def rank_records(records: list[dict[str, Any]], rank_by: RankBy | str) -> list[dict[str, Any]]:
    """Records ordered by a ranking, highest first (a stable sort: equal values keep their order).

    Example:
        >>> records = [{"predicted_iou": 0.2, "stability_score": 0.9}, {"predicted_iou": 0.7, "stability_score": 0.1}]
        >>> [record["predicted_iou"] for record in rank_records(records, "sam_score")]
        [0.7, 0.2]
    """
    key = rank_key(rank_by)
    return sorted(records, key=lambda record: -record[key])


def default_iou_head(heads: UncertaintyHeads, model_name: str | None) -> str | None:
    """The IoU head that scores a model's masks: the head of the model's size if loaded, else the first IoU head.

    Example:
        >>> from usam.heads import random_heads
        >>> default_iou_head(random_heads(["model_gap", "iou_tiny", "iou_large"]), "sam2.1-large")
        'iou_large'
    """
    size, _ = size_and_family(model_name) if model_name else (None, None)
    if size is not None and size_head_name(size) in heads.names:
        return size_head_name(size)
    return next((name for name in heads.names if head_spec(name).kind is HeadKind.IOU), None)


def iou_lower_bounds(
    heads: UncertaintyHeads,
    iou_head: str,
    predicted: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    bound: BoundKind | str = BoundKind.MONDRIAN,
) -> torch.Tensor:
    """Conformal lower bounds of predicted IoUs, for heads calibrated with ``usam calibrate``.

    Args:
        heads: The heads; their calibration must cover ``iou_head``.
        iou_head: The IoU head whose predictions ``predicted`` are.
        predicted: The head's raw predictions (any shape).
        alpha: Miscoverage: over masks like the calibration rows, P(true IoU >= bound) >= 1 - alpha (marginal).
        bound: ``"mondrian"`` (per bin of the calibrated IoU) or ``"marginal"``.

    Raises:
        HeadsFileError: The heads carry no calibration of ``iou_head``; filter with ``min_predicted_iou`` instead,
            or calibrate the heads (``usam calibrate``).
    """
    calibration = heads.calibration if heads is not None else None
    if calibration is None or iou_head not in calibration.heads:
        raise HeadsFileError(
            f"min_iou_lower needs heads whose IoU head {iou_head} is calibrated (a conformal bound; see 'usam "
            "calibrate'), and these heads carry no such calibration; filter by min_predicted_iou instead"
        )
    head = calibration.heads[iou_head]
    values = predicted.detach().float().cpu().numpy()
    lower = head.lower_bound(values, alpha, bound)
    return torch.as_tensor(lower, dtype=torch.float32).to(predicted.device)


class UncertainMaskGenerator:
    """SAM2's automatic mask generator whose records carry usam's estimates for each mask.

    Each record is SAM2's (``segmentation``, ``area``, ``bbox``, ``predicted_iou`` = SAM's score,
    ``point_coords``, ``stability_score``, ``crop_box``) plus ``uncertainty`` {head: value}, ``entropy`` (H_Std of
    the mask's low-resolution logits, bits) and :data:`PREDICTED_IOU_KEY` (the IoU head's value, None without one).

    Args:
        model: A SAM2 model, a ``SAM2ImagePredictor`` or a :class:`usam.UncertainSAM` (its model is used; the
            generator builds its own image predictor for it, as SAM2's does).
        heads: Heads, a path to load them from, or None (entropy only).
        iou_head: The IoU head behind the predicted IoU; default :func:`default_iou_head`.
        min_predicted_iou: Drop masks whose predicted IoU is below this, at the stage where SAM2 applies
            ``pred_iou_thresh`` (before NMS). Pass ``pred_iou_thresh=0`` to use it in place of SAM's score.
        min_iou_lower: Drop masks whose conformal IoU lower bound is below this (calibrated heads only).
        alpha: Miscoverage of that bound (:mod:`usam.calibration`; the guarantee is marginal, over masks).
        bound: Which conformal bound: ``"mondrian"`` (per bin) or ``"marginal"``.
        rank_by: Order of the records: SAM's score (SAM2's own order is by crop, then point), the stability score,
            or usam's predicted IoU.
        device: Where the heads run (default: the model's device).
        precision: What SAM2 runs in; None for the device's default (see :func:`usam.sam2_adapter.effective_precision`).
        **sam2_options: ``SAM2AutomaticMaskGenerator``'s options (``points_per_side``, ``points_per_batch``,
            ``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh``, ``crop_n_layers``, ...).

    Example:
        >>> generator = UncertainMaskGenerator(sam_model, "h.safetensors", rank_by="predicted_iou")  # doctest: +SKIP
        >>> records = generator.generate(image)  # doctest: +SKIP
        >>> records[0]["usam_predicted_iou"], records[0]["uncertainty"]["task_gap"]  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        heads: UncertaintyHeads | str | Path | None = None,
        *,
        iou_head: str | None = None,
        min_predicted_iou: float | None = None,
        min_iou_lower: float | None = None,
        alpha: float = DEFAULT_ALPHA,
        bound: BoundKind | str = BoundKind.MONDRIAN,
        rank_by: RankBy | str = RankBy.SAM_SCORE,
        device: str | torch.device | None = None,
        precision: Precision | str | None = None,
        **sam2_options: Any,
    ) -> None:
        sam_model = _sam2_model_of(model)
        if not hasattr(sam_model, "sam_mask_decoder"):
            raise InvalidInputError(
                f"UncertainMaskGenerator needs a SAM2 model, a SAM2ImagePredictor or an UncertainSAM, got a "
                f"{type(model).__name__}"
            )
        if isinstance(heads, (str, Path)):
            heads = load_heads(heads)
        decoder = sam2_adapter.mask_decoder_of(sam_model)
        self.device = torch.device(device) if device is not None else next(decoder.parameters()).device
        self.precision = sam2_adapter.effective_precision(self.device, precision)
        self.rank_by = check_choice(RankBy, rank_by, "rank_by")
        self.min_predicted_iou = _optional_iou(min_predicted_iou, "min_predicted_iou")
        self.min_iou_lower = _optional_iou(min_iou_lower, "min_iou_lower")
        self.alpha = check_alpha(alpha)
        self.bound = check_choice(BoundKind, bound, "bound")
        self.heads = self._checked_heads(heads, sam_model)
        self.iou_head = self._choose_iou_head(iou_head, sam_model)
        self.model_name = sam2_adapter.model_name_of(sam_model)
        if self.min_iou_lower is not None:
            iou_lower_bounds(self.heads, self.iou_head, torch.zeros(0))  # refuses uncalibrated heads now, not later
        estimator = self._estimate if self.heads is not None else None
        self.generator = sam2_automatic.make_estimating_generator(
            sam_model,
            estimator,
            self._keep if self._filters_rows else None,
            capture_signals=self.heads is not None and self.heads.metadata.reads_signals,
            **sam2_options,
        )

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | SAM2ModelSpec | ModelCard = "sam2.1-tiny",
        heads: UncertaintyHeads | str | Path | None = None,
        *,
        checkpoint: str | Path | None = None,
        device: str | torch.device | None = None,
        hydra_overrides: list[str] | None = None,
        **options: Any,
    ) -> UncertainMaskGenerator:
        """Build a released SAM2 model (weights downloaded on first use) or a card's, and its generator."""
        sam_model = sam2_adapter.build_sam2_model(
            model, checkpoint, device=device, hydra_overrides=hydra_overrides or []
        )
        return cls(sam_model, heads, device=device, **options)

    def _checked_heads(self, heads: UncertaintyHeads | None, sam_model: Any) -> UncertaintyHeads | None:
        needs_heads = self.min_predicted_iou is not None or self.min_iou_lower is not None
        if heads is None:
            if needs_heads or self.rank_by is RankBy.PREDICTED_IOU:
                raise InvalidInputError("filtering or ranking by the predicted IoU needs heads; pass heads")
            return None
        token_dim = sam2_adapter.token_dim_of(sam_model)
        if heads.metadata.token_dim != token_dim:
            raise HeadsFileError(
                f"the heads expect {heads.metadata.token_dim}-d tokens but this SAM2 model's decoder emits "
                f"{token_dim}-d tokens; use heads trained for this model"
            )
        return heads.to(self.device).eval()

    def _choose_iou_head(self, iou_head: str | None, sam_model: Any) -> str | None:
        if self.heads is None:
            return None
        if iou_head is None:
            chosen = default_iou_head(self.heads, sam2_adapter.model_name_of(sam_model))
            if chosen is None and (self._filters_rows or self.rank_by is RankBy.PREDICTED_IOU):
                raise InvalidInputError(
                    f"filtering or ranking by the predicted IoU needs an IoU head; these heads have only "
                    f"{', '.join(self.heads.names)}"
                )
            return chosen
        if head_spec(iou_head).kind is not HeadKind.IOU or iou_head not in self.heads.names:
            iou_heads = [name for name in self.heads.names if head_spec(name).kind is HeadKind.IOU]
            raise InvalidInputError(
                f"iou_head {iou_head!r} is not an IoU head of these heads; choose one of {', '.join(iou_heads) or '-'}"
            )
        return iou_head

    @property
    def _filters_rows(self) -> bool:
        return self.min_predicted_iou is not None or self.min_iou_lower is not None

    def _estimate(self, call: sam2_adapter.DecoderCall) -> torch.Tensor:
        """(B * M, K) estimates of one decoder call's masks, in SAM2's order (prompt-major)."""
        token_index = head_token_indices(call.mask_token_index, self.heads.metadata.pairing)
        features = call_head_features(self.heads, call, token_index)
        with torch.no_grad():
            return self.heads(features.to(self.device)).T.float()

    def _keep(self, estimates: torch.Tensor) -> torch.Tensor:
        predicted = estimates[:, self.heads.names.index(self.iou_head)]
        keep = torch.ones_like(predicted, dtype=torch.bool)
        if self.min_predicted_iou is not None:
            keep &= predicted >= self.min_predicted_iou
        if self.min_iou_lower is not None:
            lower = iou_lower_bounds(self.heads, self.iou_head, predicted, self.alpha, self.bound)
            keep &= lower >= self.min_iou_lower
        return keep

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Segment everything in an image (H x W x 3 uint8 RGB; grayscale, RGBA and 16-bit are converted).

        Returns:
            One record per mask (see the class), ordered by :attr:`rank_by`, highest first.

        Raises:
            HeadsFileError: The heads returned NaN or infinite estimates.
        """
        image = as_rgb_uint8(image)
        with torch.no_grad(), sam2_adapter.inference_context(self.device, self.precision):
            records, per_record = sam2_automatic.generate_with_estimates(self.generator, image)
        entropy = mask_entropy(torch.from_numpy(per_record["low_res_logits"])).numpy() if records else []
        estimates = per_record.get("estimates")
        if estimates is not None and not np.isfinite(estimates).all():
            raise HeadsFileError("the heads produced NaN or infinite estimates")
        names = self.heads.names if self.heads is not None else []
        for index, record in enumerate(records):
            record["entropy"] = float(entropy[index])
            record["uncertainty"] = {name: float(estimates[index, column]) for column, name in enumerate(names)}
            record[PREDICTED_IOU_KEY] = record["uncertainty"][self.iou_head] if self.iou_head is not None else None
        return rank_records(records, self.rank_by)


def _sam2_model_of(model: Any) -> Any:
    """The SAM2 model of an ``UncertainSAM`` (its predictor's), a ``SAM2ImagePredictor``, or the model itself."""
    holder = getattr(model, "predictor", model)
    return getattr(holder, "model", holder)


def _optional_iou(value: float | None, name: str) -> float | None:
    return None if value is None else check_float(value, name, minimum=0.0, maximum=1.0)
