"""SAM2's video predictor: building one, and capturing what its mask decoder computed for each frame and object.

``SAM2VideoPredictor`` (the per-object predictor of sam2 1.1) decodes one object per mask-decoder call: in
``add_new_points_or_box``/``add_new_mask`` for the prompted frame, and in ``propagate_in_video`` for every frame
that is not a conditioning frame of that object, objects in index order. Each call either asks for three masks and
keeps the one of highest predicted IoU (prompts of at most one click, and tracking frames with the released
configs' ``multimask_output_for_tracking``), or asks for one mask, which SAM2's dynamic fallback may replace with one
of tokens 1..3. The hooks of :class:`~usam.sam2_adapter.DecoderTokenCapture` see every call; this module adds the
decoder's outputs (IoU predictions, object score) and the choice SAM2 makes among them, and maps the calls to
(frame, object). Hooks exist only while a SAM2 call runs (between two frames of a propagation none are left).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from usam.errors import InvalidInputError, UsamError
from usam.model_card import ModelCard
from usam.models import SAM2ModelSpec
from usam.sam2_adapter import DecoderTokenCapture, _import_sam2, build_sam2_model

VIDEO_PREDICTOR_OVERRIDES = (
    "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
    # What SAM2's build_sam2_video_predictor sets on top of the image model's settings ...
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    # ... except hole filling, which needs the compiled sam2._C extension that CPU installs lack.
    "++model.fill_hole_area=0",
)
"""Hydra overrides that turn a SAM2 config into a ``SAM2VideoPredictor`` as ``build_sam2_video_predictor`` does."""

GIVEN_MASK_TOKEN = -1
"""``mask_token_index`` of a frame whose mask is the user's own (``add_new_mask``): no decoder token produced it."""


def build_video_predictor(
    model: str | Path | SAM2ModelSpec | ModelCard,
    checkpoint: str | Path | None = None,
    *,
    hydra_overrides: Sequence[str] = (),
    **build_kwargs: Any,
) -> Any:
    """A ``SAM2VideoPredictor`` for a released model name or a model card, built like :func:`build_sam2_model`.

    Args:
        model: A model name (``sam2.1-tiny``), its spec, a model card or its path.
        checkpoint: A local checkpoint file (skips the download).
        hydra_overrides: Extra Hydra overrides, after the video predictor's own.
        **build_kwargs: Passed to :func:`usam.sam2_adapter.build_sam2_model` (``device``, ``random_weights``, ...).

    Raises:
        InvalidInputError: Unknown model, bad card or overrides.
        CheckpointError: A checkpoint that is missing, corrupt or does not fit.
    """
    return build_sam2_model(
        model, checkpoint, hydra_overrides=[*VIDEO_PREDICTOR_OVERRIDES, *hydra_overrides], **build_kwargs
    )


def check_video_predictor(predictor: Any) -> None:
    """Refuse anything that is not a ``SAM2VideoPredictor`` (or behaves like one).

    Raises:
        InvalidInputError: Naming the type given, e.g. for a ``SAM2ImagePredictor``.
    """
    module = sys.modules.get("sam2.sam2_video_predictor")
    expected = getattr(module, "SAM2VideoPredictor", None)
    if expected is not None and isinstance(predictor, expected):
        return
    needed = ("init_state", "add_new_points_or_box", "propagate_in_video", "reset_state", "remove_object")
    if not (
        all(callable(getattr(predictor, name, None)) for name in needed) and hasattr(predictor, "sam_mask_decoder")
    ):
        given = f"{type(predictor).__module__}.{type(predictor).__qualname__}"
        raise InvalidInputError(
            f"UncertainVideoSAM wraps a sam2.sam2_video_predictor.SAM2VideoPredictor, got a {given}; build one with "
            "usam.sam2_adapter.video.build_video_predictor(model) or sam2.build_sam.build_sam2_video_predictor"
        )


@dataclasses.dataclass
class ObjectDecodes:
    """What the mask decoder computed for some objects on one frame, one row per object.

    Attributes:
        frame_index: The frame.
        object_ids: The objects (SAM2's client-side ids), one per row.
        iou_token: (N, D) IoU tokens.
        mask_tokens: (N, 4, D) mask tokens.
        mask_token_index: (N,) the token that produced the mask SAM2 kept (:data:`GIVEN_MASK_TOKEN` for a user's
            mask).
        sam_iou: (N,) SAM2's IoU prediction of the kept mask (1 for a user's mask, as SAM2 reports it).
        object_score_logits: (N,) SAM2's object score logit (> 0: the object is visible).
        low_res_logits: (N, h, w) the kept mask's low-resolution logits as SAM2 returns them (an absent object's
            mask is SAM2's "no object" score everywhere).
    """

    frame_index: int
    object_ids: list[Any]
    iou_token: torch.Tensor
    mask_tokens: torch.Tensor
    mask_token_index: torch.Tensor
    sam_iou: torch.Tensor
    object_score_logits: torch.Tensor
    low_res_logits: torch.Tensor


class _VideoDecoderCapture(DecoderTokenCapture):
    """:class:`DecoderTokenCapture` that also keeps the decoder's IoU predictions, masks and object scores."""

    def __init__(self, predictor: Any) -> None:
        super().__init__(predictor, multimask_output=None)
        self.outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> _VideoDecoderCapture:
        super().__enter__()
        self.outputs = []
        return self

    def _on_decoder_end(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: tuple) -> None:
        super()._on_decoder_end(module, args, kwargs, output)
        masks, ious, _, object_score_logits = output
        self.outputs.append((masks.detach(), ious.detach(), object_score_logits.detach()))

    def decodes(self, frame_index: int, object_ids: list[Any], no_object_score: float) -> ObjectDecodes:
        """The captured calls as one row per object (one call per object, in ``object_ids`` order).

        Raises:
            UsamError: The number of decoder calls is not one per object (a SAM2 that decodes differently).
        """
        if len(self.calls) != len(object_ids) or any(len(call.iou_token) != 1 for call in self.calls):
            raise UsamError(
                f"expected one mask-decoder call per object on frame {frame_index} ({len(object_ids)}), captured "
                f"{[len(call.iou_token) for call in self.calls]}; this SAM2 video predictor decodes differently "
                "from sam2 1.1's per-object predictor"
            )
        if not self.calls:  # every object reused its prompt's output on this frame
            dim = int(self.decoder.transformer_dim)
            return ObjectDecodes(
                frame_index=int(frame_index),
                object_ids=[],
                iou_token=torch.empty(0, dim),
                mask_tokens=torch.empty(0, self.decoder.num_mask_tokens, dim),
                mask_token_index=torch.empty(0, dtype=torch.long),
                sam_iou=torch.empty(0),
                object_score_logits=torch.empty(0),
                low_res_logits=torch.empty(0, 0, 0),
            )
        token_index, sam_iou, score, logits = [], [], [], []
        for call, (masks, ious, object_score_logits) in zip(self.calls, self.outputs, strict=True):
            # SAM2's _forward_sam_heads keeps the mask of highest predicted IoU of a multimask call.
            kept = int(ious[0].float().argmax()) if ious.shape[-1] > 1 else 0
            token_index.append(call.mask_token_index[0, kept])
            sam_iou.append(ious[0, kept].float())
            score.append(object_score_logits[0, 0].float())
            kept_logits = masks[0, kept].float()
            if object_score_logits[0, 0] <= 0:  # SAM2 empties the mask of an object it deems absent
                kept_logits = torch.full_like(kept_logits, no_object_score)
            logits.append(kept_logits)
        return ObjectDecodes(
            frame_index=int(frame_index),
            object_ids=list(object_ids),
            iou_token=torch.cat([call.iou_token for call in self.calls]),
            mask_tokens=torch.cat([call.mask_tokens for call in self.calls]),
            mask_token_index=torch.stack(token_index).long(),
            sam_iou=torch.stack(sam_iou),
            object_score_logits=torch.stack(score),
            low_res_logits=torch.stack(logits),
        )


def _no_object_score() -> float:
    from sam2.modeling.sam2_base import NO_OBJ_SCORE

    return float(NO_OBJ_SCORE)


def add_points_or_box(
    predictor: Any, state: dict, frame_idx: int, obj_id: Any, **prompt: Any
) -> tuple[tuple[int, list[Any], torch.Tensor], ObjectDecodes]:
    """``predictor.add_new_points_or_box`` with the decoder's tokens and outputs for the prompted object.

    Returns:
        What SAM2 returns (frame index, object ids, video-resolution mask logits) and the object's decode.
    """
    with _VideoDecoderCapture(predictor) as capture:
        returned = predictor.add_new_points_or_box(state, frame_idx, obj_id, **prompt)
    return returned, capture.decodes(frame_idx, [obj_id], _no_object_score())


def add_mask(
    predictor: Any, state: dict, frame_idx: int, obj_id: Any, mask: Any
) -> tuple[tuple[int, list[Any], torch.Tensor], ObjectDecodes]:
    """``predictor.add_new_mask``; with the released configs SAM2 keeps the given mask as the frame's output.

    Then the decode row holds the tokens of the decoder call SAM2 makes for the object pointer, marked with
    :data:`GIVEN_MASK_TOKEN`, SAM2's IoU of 1 and its object score; otherwise the decoded mask's row.
    """
    with _VideoDecoderCapture(predictor) as capture:
        returned = predictor.add_new_mask(state, frame_idx, obj_id, mask)
    mask_is_output = bool(getattr(predictor, "use_mask_input_as_output_without_sam", False))
    if not mask_is_output:
        return returned, capture.decodes(frame_idx, [obj_id], _no_object_score())
    obj_idx = state["obj_id_to_idx"][obj_id]
    out = state["temp_output_dict_per_obj"][obj_idx]
    out = out["cond_frame_outputs"].get(frame_idx) or out["non_cond_frame_outputs"].get(frame_idx)
    calls = capture.calls
    if calls:  # the object pointer's decoder call (models with use_obj_ptrs_in_encoder)
        iou_token, mask_tokens = calls[-1].iou_token, calls[-1].mask_tokens
    else:
        dim = int(predictor.sam_mask_decoder.transformer_dim)
        iou_token = torch.full((1, dim), float("nan"))
        mask_tokens = torch.full((1, 4, dim), float("nan"))
    decodes = ObjectDecodes(
        frame_index=int(frame_idx),
        object_ids=[obj_id],
        iou_token=iou_token,
        mask_tokens=mask_tokens,
        mask_token_index=torch.tensor([GIVEN_MASK_TOKEN]),
        sam_iou=torch.ones(1),
        object_score_logits=out["object_score_logits"].reshape(1).float().cpu(),
        low_res_logits=out["pred_masks"][:, 0].float().cpu(),
    )
    return returned, decodes


def propagate(
    predictor: Any,
    state: dict,
    *,
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    **options: Any,
) -> Iterator[tuple[tuple[int, list[Any], torch.Tensor], ObjectDecodes]]:
    """``predictor.propagate_in_video`` with, per frame, the decodes of the objects SAM2 decoded on it.

    Objects whose frame is one of their conditioning frames are not decoded again (SAM2 reuses the prompt's
    output); their rows are absent. Hooks (and ``context``, e.g. an autocast) exist only while SAM2 computes a
    frame, not between yields.
    """
    frames = predictor.propagate_in_video(state, **options)
    no_object_score = _no_object_score()
    try:
        while True:
            with context(), _VideoDecoderCapture(predictor) as capture:
                try:
                    frame_idx, obj_ids, video_res_masks = next(frames)
                except StopIteration:
                    return
                except RuntimeError as error:
                    if "must have the same dtype" not in str(error):
                        raise
                    # SAM2 stores its memory in bfloat16 and relies on autocast to mix it with float32 weights;
                    # without autocast a frame whose memory holds no float32 object pointer fails.
                    raise UsamError(
                        "SAM2's video predictor keeps its memory in bfloat16 and cannot track this frame in float32 "
                        f"({error}); run it with precision='bfloat16' (bfloat16 autocast, SAM2's default on CUDA)"
                    ) from None
            decoded = [
                obj_id
                for obj_idx, obj_id in enumerate(obj_ids)
                if frame_idx not in state["output_dict_per_obj"][obj_idx]["cond_frame_outputs"]
            ]
            yield (frame_idx, obj_ids, video_res_masks), capture.decodes(frame_idx, decoded, no_object_score)
    finally:
        frames.close()


def load_sam2_video_modules() -> None:
    """Import SAM2 (and its video predictor) so that type checks and constants are available."""
    _import_sam2()
    import sam2.sam2_video_predictor  # noqa: F401
