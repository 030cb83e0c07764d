"""SAM2's automatic mask generator with a per-mask estimate carried through its own filters (part of the adapter).

``SAM2AutomaticMaskGenerator`` prompts a grid of points, 64 per decoder call, and thins the masks out in several
steps: SAM's score (``pred_iou_thresh``), the stability score, masks touching a crop's edge, box NMS within a crop and
crop NMS between crops. Every step filters or concatenates one ``MaskData``, whose ``filter`` and ``cat`` treat all
fields it holds alike. So the estimates stay aligned by construction if they enter that ``MaskData`` where SAM2
builds it, in ``_process_batch``.

:class:`EstimatingMaskGenerator` is a subclass (nothing of SAM2's is patched) whose ``_process_batch`` is SAM2's
(sam2 1.1.0, without the optional mask-to-mask refinement) with three additions: the decoder tokens are captured
with :class:`usam.sam2_adapter.DecoderTokenCapture` during the batch's one decoder call and turned into per-mask
estimates by a caller's function; those estimates enter the batch's ``MaskData`` as one more field; and a caller's
filter on them may drop masks beside SAM's thresholds, at the same stage. A model whose card asks for click-map
prompting also gets each point's click map as its mask input, as everywhere in usam. The alternative, recomputing
the estimates of the surviving masks afterwards from their points, would cost a second decoder pass per mask.
The records equal SAM2's generator's (tested), except that an image where no crop keeps a mask gives no records
(SAM2 1.1.0 fails there with ``crop_n_layers > 0``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from usam.click_map import click_map
from usam.errors import InvalidInputError
from usam.sam2_adapter import (
    DecoderCall,
    DecoderTokenCapture,
    _import_sam2,
    click_map_prompting_of,
    fit_feature_sizes,
    low_res_mask_size,
)

ESTIMATES_FIELD = "usam_estimates"
"""The ``MaskData`` field (rows, K) that carries the caller's per-mask estimates through SAM2's filters."""

Estimator = Callable[[DecoderCall], torch.Tensor]
"""Turns one decoder call's tokens into (B * M, K) per-mask estimates, in SAM2's mask order (prompt-major)."""

RowFilter = Callable[[torch.Tensor], torch.Tensor]
"""Turns (rows, K) estimates into a (rows,) boolean tensor: which masks to keep."""


@functools.cache
def _generator_class() -> type:
    _import_sam2()
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.utils.amg import (
        MaskData,
        batched_mask_to_box,
        calculate_stability_score,
        is_box_near_crop_edge,
        mask_to_rle_pytorch,
        uncrop_masks,
    )

    class _EstimatingMaskGenerator(SAM2AutomaticMaskGenerator):
        """SAM2's generator whose ``MaskData`` also carries per-mask estimates (see the module)."""

        def __init__(
            self,
            model: torch.nn.Module,
            estimator: Estimator | None,
            row_filter: RowFilter | None,
            capture_signals: bool,
            **sam2_options: Any,
        ) -> None:
            if sam2_options.get("use_m2m"):
                raise InvalidInputError(
                    "use_m2m (SAM2's mask-to-mask refinement) is not supported with usam's estimates; leave it off"
                )
            super().__init__(model, **sam2_options)
            fit_feature_sizes(self.predictor)
            self.estimator = estimator
            self.row_filter = row_filter
            self.capture_signals = capture_signals
            self.last_mask_data: Any = None

        def _process_batch(
            self,
            points: np.ndarray,
            im_size: tuple[int, ...],
            crop_box: list[int],
            orig_size: tuple[int, ...],
            normalize: bool = False,
        ) -> Any:
            # SAM2 1.1.0's _process_batch (use_m2m off) plus click maps, the estimates and the row filter.
            orig_h, orig_w = orig_size
            points = torch.as_tensor(points, dtype=torch.float32, device=self.predictor.device)
            in_points = self.predictor._transforms.transform_coords(points, normalize=normalize, orig_hw=im_size)
            in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
            capture = DecoderTokenCapture(
                self.predictor, multimask_output=self.multimask_output or None, signals=self.capture_signals
            )
            with capture:
                masks, iou_preds, low_res_masks = self.predictor._predict(
                    in_points[:, None, :],
                    in_labels[:, None],
                    mask_input=self._click_maps(points, im_size),
                    multimask_output=self.multimask_output,
                    return_logits=True,
                )
            data = MaskData(
                masks=masks.flatten(0, 1),
                iou_preds=iou_preds.flatten(0, 1),
                points=points.repeat_interleave(masks.shape[1], dim=0),
                low_res_masks=low_res_masks.flatten(0, 1),
            )
            del masks
            if self.estimator is not None:
                data[ESTIMATES_FIELD] = self.estimator(capture.single_call()).to(data["iou_preds"].device)
            if self.pred_iou_thresh > 0.0:
                data.filter(data["iou_preds"] > self.pred_iou_thresh)
            if self.row_filter is not None:
                data.filter(self.row_filter(data[ESTIMATES_FIELD]))
            data["stability_score"] = calculate_stability_score(
                data["masks"], self.mask_threshold, self.stability_score_offset
            )
            if self.stability_score_thresh > 0.0:
                data.filter(data["stability_score"] >= self.stability_score_thresh)
            data["masks"] = data["masks"] > self.mask_threshold
            data["boxes"] = batched_mask_to_box(data["masks"])
            keep_mask = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
            if not torch.all(keep_mask):
                data.filter(keep_mask)
            data["masks"] = uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
            data["rles"] = mask_to_rle_pytorch(data["masks"])
            del data["masks"]
            return data

        def _process_crop(self, *args: Any, **kwargs: Any) -> Any:
            data = super()._process_crop(*args, **kwargs)
            if len(data["rles"]) == 0:
                # SAM2 gives an empty crop's crop_boxes the shape (0,), and crop NMS fails when no crop kept a mask.
                data["crop_boxes"] = torch.zeros((0, 4), dtype=torch.int64)
            return data

        def _click_maps(self, points: torch.Tensor, im_size: tuple[int, ...]) -> torch.Tensor | None:
            """Each point's click map for a model trained with them (see :mod:`usam.click_map`), else None."""
            prompting = click_map_prompting_of(self.predictor)
            if prompting is None:
                return None
            maps = [
                click_map(
                    point[None],
                    None,
                    map_size=prompting.map_size,
                    image_hw=(int(im_size[0]), int(im_size[1])),
                    model_image_size=low_res_mask_size(self.predictor) * 4,
                    sigma_px=prompting.sigma_px,
                    amplitude=prompting.amplitude,
                )
                for point in points.cpu().numpy()
            ]
            return torch.as_tensor(np.stack(maps)[:, None], dtype=torch.float32, device=self.predictor.device)

        def _generate_masks(self, image: np.ndarray) -> Any:
            data = super()._generate_masks(image)
            # generate() builds its records from this MaskData in order; keep it to read our fields alongside.
            self.last_mask_data = data
            return data

    return _EstimatingMaskGenerator


def make_estimating_generator(
    sam_model: torch.nn.Module,
    estimator: Estimator | None = None,
    row_filter: RowFilter | None = None,
    *,
    capture_signals: bool = False,
    **sam2_options: Any,
) -> Any:
    """SAM2's automatic mask generator whose masks carry per-mask estimates through its filtering.

    Args:
        sam_model: A SAM2 model (``SAM2Base``); the generator builds its own image predictor for it.
        estimator: Per-mask estimates from one decoder call's tokens, or None (then the generator is SAM2's).
        row_filter: Which masks to keep by their estimates, applied beside ``pred_iou_thresh`` (needs an
            ``estimator``).
        capture_signals: Give the estimator calls that carry what SAM2's scalar signals need (for heads that read
            signals).
        **sam2_options: ``SAM2AutomaticMaskGenerator``'s options (``points_per_side``, ``pred_iou_thresh``, ...);
            ``use_m2m`` is refused.

    Raises:
        InvalidInputError: ``use_m2m`` asked for, or a row filter without an estimator.
    """
    if row_filter is not None and estimator is None:
        raise InvalidInputError("a filter on the estimates needs an estimator")
    return _generator_class()(sam_model, estimator, row_filter, capture_signals, **sam2_options)


def generate_with_estimates(generator: Any, image: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Run a :func:`make_estimating_generator` generator: SAM2's records and, per record, what usam reads.

    Returns:
        ``(records, per_record)``: SAM2's records (``segmentation``, ``area``, ``bbox``, ``predicted_iou``,
        ``point_coords``, ``stability_score``, ``crop_box``) and, aligned with them, ``estimates`` (N, K) (absent
        without an estimator) and ``low_res_logits`` (N, h, w), the decoder's logits of each mask in its crop.
    """
    generator.last_mask_data = None
    try:
        records = generator.generate(image)
        data = generator.last_mask_data
    finally:
        generator.last_mask_data = None
    per_record = {"low_res_logits": np.asarray(data["low_res_masks"], dtype=np.float32)}
    if generator.estimator is not None:
        per_record["estimates"] = np.asarray(data[ESTIMATES_FIELD], dtype=np.float32)
    return records, per_record
