"""``UncertainVideoSAM``: SAM2's video predictor, with SAM2's IoU, object score and usam's estimates per frame.

SAM2 computes an IoU prediction for every frame and object of a video but never returns it. The wrapper calls the
video predictor's own methods (same names, same arguments) and captures each frame's decoder tokens with hooks
that exist only while SAM2 computes (see :mod:`usam.sam2_adapter.video`), so the predictor is left as it was. Per
frame it yields, for every object, the mask, SAM2's IoU prediction and object score, every loaded head's estimate
(one fused computation per frame), the mask entropy, the tokens, and which token produced the mask.

What usam learnt about a frame is kept in the inference state (key :data:`ESTIMATES_KEY`), next to SAM2's own
outputs: a prompted frame is decoded when the prompt is added and only reused during propagation.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usam import sam2_adapter
from usam.devices import Precision
from usam.entropy import mask_entropy
from usam.errors import InvalidInputError
from usam.heads import UncertaintyHeads, refuse_signal_heads
from usam.model_card import ModelCard
from usam.models import SAM2ModelSpec
from usam.predictor import head_features, head_token_indices, prepare_heads
from usam.sam2_adapter import video as sam2_video
from usam.validation import check_int

ESTIMATES_KEY = "usam_estimates"
"""Key of the inference state under which the wrapper keeps its estimates: {(frame, object id): estimate}."""

NO_TOKEN = sam2_video.GIVEN_MASK_TOKEN
"""``mask_token_index`` of a mask that no decoder token produced (a given mask) or that usam did not see decoded."""

JPEG_SUFFIXES = (".jpg", ".jpeg", ".JPG", ".JPEG")
"""Frame files SAM2 reads from a folder (named by frame number: ``00000.jpg``)."""


@dataclasses.dataclass
class _Estimate:
    """What usam knows about one object on one frame (from the decoder call that produced its mask)."""

    iou_token: np.ndarray
    mask_tokens: np.ndarray
    mask_token_index: int
    head_token_index: int
    sam_iou: float
    object_score_logit: float
    entropy: float
    uncertainty: dict[str, float]
    prompted: bool


@dataclasses.dataclass
class VideoFrameResult:
    """One frame of a video, for all objects; plain arrays owned by the caller, one row per object.

    Values usam has no decode for (an object without an output on the frame yet) are NaN, with
    ``mask_token_index`` :data:`NO_TOKEN`.

    Attributes:
        frame_index: The frame.
        object_ids: SAM2's object ids, in row order.
        masks: (O, H, W) boolean masks at the video's resolution (what SAM2 yields, thresholded at 0).
        sam_iou: (O,) SAM2's own IoU prediction for the mask (1 for a mask given with ``add_new_mask``).
        object_score_logits: (O,) SAM2's object score logit (> 0: SAM2 deems the object visible).
        uncertainty: Head name -> (O,) estimates (NaN for a given mask, which no decoder token produced).
        entropy: (O,) mask entropy H_Std (bits) of the low-resolution logits SAM2 kept.
        mask_token_index: (O,) the decoder token that produced the mask: 0 single-mask, 1..3 a multimask token
            (SAM2's pick among three, or its dynamic fallback), :data:`NO_TOKEN` for none.
        head_token_index: (O,) the token the heads read (depends on the heads' pairing).
        iou_token: (O, D) IoU tokens; mask_tokens: (O, 4, D) all four mask tokens.
        prompted: (O,) whether the frame's output came from a prompt (``add_new_*``) rather than tracking.
    """

    frame_index: int
    object_ids: list[Any]
    masks: np.ndarray
    sam_iou: np.ndarray
    object_score_logits: np.ndarray
    uncertainty: dict[str, np.ndarray]
    entropy: np.ndarray
    mask_token_index: np.ndarray
    head_token_index: np.ndarray
    iou_token: np.ndarray
    mask_tokens: np.ndarray
    prompted: np.ndarray


class UncertainVideoSAM:
    """Wrap a ``SAM2VideoPredictor`` to get SAM2's per-frame scores and UncertainSAM estimates while tracking.

    Methods have SAM2's names and arguments; those that return masks return :class:`VideoFrameResult`.

    Args:
        predictor: A ``sam2.sam2_video_predictor.SAM2VideoPredictor``.
        heads: Heads from :func:`usam.load_heads`, a path to them, or None (SAM2's scores, entropy and tokens only).
        device: Where the heads run (default: the predictor's device).
        precision: What SAM2 runs in; None for the device's default (see
            :func:`usam.sam2_adapter.effective_precision`).

    Example:
        >>> model = UncertainVideoSAM.from_pretrained("sam2.1-tiny", "heads.safetensors")  # doctest: +SKIP
        >>> state = model.init_state("video_frames/")  # doctest: +SKIP
        >>> model.add_new_points_or_box(state, 0, 1, points=[[210, 350]], labels=[1])  # doctest: +SKIP
        >>> for frame in model.propagate_in_video(state):  # doctest: +SKIP
        ...     print(frame.frame_index, frame.sam_iou, frame.uncertainty["iou_tiny"])
    """

    def __init__(
        self,
        predictor: Any,
        heads: UncertaintyHeads | str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        precision: Precision | str | None = None,
    ) -> None:
        sam2_video.check_video_predictor(predictor)
        if sam2_adapter.click_map_prompting_of(predictor) is not None:
            raise InvalidInputError(
                f"{sam2_adapter.describe_model(predictor)} reads its prompt from a click map in SAM's mask input, "
                "which SAM2's video predictor cannot give with points; track videos with a sparse-prompt model"
            )
        self.predictor = predictor
        decoder = sam2_adapter.mask_decoder_of(predictor)
        self.device = torch.device(device) if device is not None else next(decoder.parameters()).device
        self.precision: Precision = sam2_adapter.effective_precision(self.device, precision)
        self.heads = prepare_heads(heads, predictor, self.device)
        # Tracking frames decode one mask output: the other tokens' scores and logits that signals need are gone.
        refuse_signal_heads(self.heads, "video tracking")

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | SAM2ModelSpec | ModelCard = "sam2.1-tiny",
        heads: UncertaintyHeads | str | Path | None = None,
        *,
        checkpoint: str | Path | None = None,
        device: str | torch.device | None = None,
        precision: Precision | str | None = None,
        **build_kwargs: Any,
    ) -> UncertainVideoSAM:
        """Build a released SAM2 model (weights downloaded on first use) or a card's as a video predictor, and wrap it.

        Args:
            model: Model name or model card (see :meth:`usam.UncertainSAM.from_pretrained`).
            heads: Heads or a path to them.
            checkpoint: Local checkpoint file; skips the download.
            device: CUDA if available, else CPU.
            precision: What SAM2 runs in.
            **build_kwargs: Passed to :func:`usam.sam2_adapter.video.build_video_predictor`.
        """
        predictor = sam2_video.build_video_predictor(model, checkpoint, device=device, **build_kwargs)
        return cls(predictor, heads, precision=precision)

    def _context(self) -> Any:
        return sam2_adapter.inference_context(self.device, self.precision)

    def init_state(self, video_path: str | os.PathLike[str], **options: Any) -> dict:
        """Load a video (a folder of JPEG frames named ``<number>.jpg``, or an .mp4 where SAM2 can read one).

        Options are SAM2's (``offload_video_to_cpu``, ``offload_state_to_cpu``, ``async_loading_frames``).

        Raises:
            InvalidInputError: The folder does not exist, holds no JPEG frames, or names them otherwise; an .mp4
                without the ``decord`` package SAM2 reads it with.
        """
        path = Path(video_path)
        check_video_source(path)
        try:
            with self._context():
                state = self.predictor.init_state(str(path), **options)
        except ModuleNotFoundError as error:
            if error.name != "decord":
                raise
            raise InvalidInputError(
                f"SAM2 reads .mp4 files with decord, which is not installed; install it, or extract the frames: "
                f"ffmpeg -i {path} -q:v 2 -start_number 0 FOLDER/'%05d.jpg'"
            ) from None
        state[ESTIMATES_KEY] = {}
        return state

    def add_new_points_or_box(
        self,
        inference_state: dict,
        frame_idx: int,
        obj_id: Any,
        points: Any = None,
        labels: Any = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: Any = None,
    ) -> VideoFrameResult:
        """SAM2's ``add_new_points_or_box``: prompt an object on a frame (also to correct it mid-video).

        Returns:
            The frame, for all objects (the others as they stand on this frame).
        """
        frame_idx = self._checked_frame(inference_state, frame_idx)
        prompt = {"points": points, "labels": labels, "clear_old_points": clear_old_points, "box": box}
        with self._context():
            (_, obj_ids, video_res_masks), decodes = sam2_video.add_points_or_box(
                self.predictor, inference_state, frame_idx, obj_id, normalize_coords=normalize_coords, **prompt
            )
        self._remember(inference_state, decodes, prompted=True)
        return self._frame_result(inference_state, frame_idx, obj_ids, video_res_masks)

    def add_new_mask(self, inference_state: dict, frame_idx: int, obj_id: Any, mask: Any) -> VideoFrameResult:
        """SAM2's ``add_new_mask``: give an object's mask (H, W) on a frame; SAM2 keeps it as the frame's output."""
        frame_idx = self._checked_frame(inference_state, frame_idx)
        with self._context():
            (_, obj_ids, video_res_masks), decodes = sam2_video.add_mask(
                self.predictor, inference_state, frame_idx, obj_id, mask
            )
        self._remember(inference_state, decodes, prompted=True)
        return self._frame_result(inference_state, frame_idx, obj_ids, video_res_masks)

    def propagate_in_video(
        self,
        inference_state: dict,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[VideoFrameResult]:
        """SAM2's ``propagate_in_video``: track all objects forward (or ``reverse``), one result per frame."""
        if start_frame_idx is not None:
            start_frame_idx = self._checked_frame(inference_state, start_frame_idx)
        options = {
            "start_frame_idx": start_frame_idx,
            "max_frame_num_to_track": max_frame_num_to_track,
            "reverse": reverse,
        }
        steps = sam2_video.propagate(self.predictor, inference_state, context=self._context, **options)
        for (frame_idx, obj_ids, video_res_masks), decodes in steps:
            self._remember(inference_state, decodes, prompted=False)
            yield self._frame_result(inference_state, frame_idx, obj_ids, video_res_masks)

    def reset_state(self, inference_state: dict) -> None:
        """SAM2's ``reset_state``: remove all objects, prompts and results (usam's estimates too)."""
        self.predictor.reset_state(inference_state)
        inference_state[ESTIMATES_KEY] = {}

    def remove_object(self, inference_state: dict, obj_id: Any, strict: bool = False, need_output: bool = True) -> Any:
        """SAM2's ``remove_object`` (returns what SAM2 returns); the object's estimates go with it."""
        with self._context():
            returned = self.predictor.remove_object(inference_state, obj_id, strict=strict, need_output=need_output)
        estimates = inference_state.setdefault(ESTIMATES_KEY, {})
        for key in [key for key in estimates if key[1] == obj_id]:
            del estimates[key]
        return returned

    def _checked_frame(self, inference_state: dict, frame_idx: Any) -> int:
        last = int(inference_state["num_frames"]) - 1
        return check_int(frame_idx, "frame index", minimum=0, maximum=last)

    def _remember(self, inference_state: dict, decodes: sam2_video.ObjectDecodes, prompted: bool) -> None:
        """Compute the heads (fused, all objects of the frame at once) and the entropy of a frame's decodes."""
        count = len(decodes.object_ids)
        if count == 0:
            return
        token_index = decodes.mask_token_index.cpu()
        decoded = token_index != NO_TOKEN
        pairing = self.heads.metadata.pairing if self.heads is not None else "true"
        head_index = torch.where(decoded, head_token_indices(token_index, pairing), token_index)
        uncertainty = {name: np.full(count, np.nan, np.float32) for name in self._head_names()}
        with torch.no_grad():
            if self.heads is not None and bool(decoded.any()):
                rows = decoded.nonzero()[:, 0]
                features = head_features(
                    decodes.iou_token[rows],
                    decodes.mask_tokens[rows],
                    head_index[rows, None].to(decodes.mask_tokens.device),
                    self.heads.metadata.inputs,
                )
                values = self.heads(features.to(self.device)).float().cpu().numpy()
                for index, name in enumerate(self.heads.names):
                    uncertainty[name][rows.numpy()] = values[index]
            entropy = mask_entropy(decodes.low_res_logits.float()).cpu().numpy()
        iou_tokens = decodes.iou_token.float().cpu().numpy()
        mask_tokens = decodes.mask_tokens.float().cpu().numpy()
        estimates = inference_state.setdefault(ESTIMATES_KEY, {})
        for row, obj_id in enumerate(decodes.object_ids):
            estimates[(decodes.frame_index, obj_id)] = _Estimate(
                iou_token=iou_tokens[row],
                mask_tokens=mask_tokens[row],
                mask_token_index=int(token_index[row]),
                head_token_index=int(head_index[row]),
                sam_iou=float(decodes.sam_iou[row]),
                object_score_logit=float(decodes.object_score_logits[row]),
                entropy=float(entropy[row]),
                uncertainty={name: float(values[row]) for name, values in uncertainty.items()},
                prompted=prompted,
            )

    def _head_names(self) -> list[str]:
        return list(self.heads.names) if self.heads is not None else []

    def _frame_result(
        self, inference_state: dict, frame_idx: int, obj_ids: list[Any], video_res_masks: torch.Tensor
    ) -> VideoFrameResult:
        estimates = inference_state.get(ESTIMATES_KEY, {})
        rows = [estimates.get((int(frame_idx), obj_id)) for obj_id in obj_ids]
        dim = sam2_adapter.token_dim_of(self.predictor)
        missing = _Estimate(
            iou_token=np.full(dim, np.nan, np.float32),
            mask_tokens=np.full((sam2_adapter.NUM_MASK_TOKENS, dim), np.nan, np.float32),
            mask_token_index=NO_TOKEN,
            head_token_index=NO_TOKEN,
            sam_iou=math.nan,
            object_score_logit=math.nan,
            entropy=math.nan,
            uncertainty={name: math.nan for name in self._head_names()},
            prompted=False,
        )
        rows = [row if row is not None else missing for row in rows]
        masks = (video_res_masks[:, 0] > 0).cpu().numpy()
        return VideoFrameResult(
            frame_index=int(frame_idx),
            object_ids=list(obj_ids),
            masks=masks,
            sam_iou=np.array([row.sam_iou for row in rows], np.float32),
            object_score_logits=np.array([row.object_score_logit for row in rows], np.float32),
            uncertainty={
                name: np.array([row.uncertainty.get(name, math.nan) for row in rows], np.float32)
                for name in self._head_names()
            },
            entropy=np.array([row.entropy for row in rows], np.float32),
            mask_token_index=np.array([row.mask_token_index for row in rows], np.int64),
            head_token_index=np.array([row.head_token_index for row in rows], np.int64),
            iou_token=np.stack([row.iou_token for row in rows]).reshape(len(rows), dim),
            mask_tokens=np.stack([row.mask_tokens for row in rows]).reshape(len(rows), -1, dim),
            prompted=np.array([row.prompted for row in rows], bool),
        )


def jpeg_frames(folder: Path) -> list[Path]:
    """The JPEG frames of a folder in SAM2's order (by the number in the name).

    Raises:
        InvalidInputError: No JPEG files, or a JPEG whose name is not a frame number.
    """
    frames = [path for path in folder.iterdir() if path.suffix in JPEG_SUFFIXES]
    if not frames:
        raise InvalidInputError(
            f"no JPEG frames in {folder}; SAM2 reads a folder of frames named 00000.jpg, 00001.jpg, ... (extract them "
            "with: ffmpeg -i video.mp4 -q:v 2 -start_number 0 FOLDER/'%05d.jpg')"
        )
    bad = sorted(path.name for path in frames if not path.stem.isdigit())
    if bad:
        raise InvalidInputError(
            f"frame {folder / bad[0]} is not named by its frame number; SAM2 orders frames by names like 00000.jpg"
        )
    return sorted(frames, key=lambda path: int(path.stem))


def check_video_source(path: Path) -> None:
    """Refuse a video SAM2 cannot read: a missing path, or a folder without frames named by number.

    Raises:
        InvalidInputError: Naming the problem.
    """
    if path.is_dir():
        jpeg_frames(path)
        return
    if path.suffix.lower() == ".mp4" and path.is_file():
        return  # SAM2 reads .mp4 files with decord, where it is installed
    if not path.exists():
        raise InvalidInputError(f"video {path} does not exist; give a folder of JPEG frames (or an .mp4 file)")
    raise InvalidInputError(f"video {path} is neither a folder of JPEG frames nor an .mp4 file")
