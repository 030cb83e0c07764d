"""Per-frame UncertainSAM estimates for transformers' video models (``Sam2VideoModel`` and its relatives).

The video model runs its mask decoder once per object and frame (objects one by one, in their order), except for a
frame whose conditioning output it has already computed (the prompted frame, when propagation passes it again):
those outputs are reused, and so are the tokens recorded when they were computed. The tracked mask of an object
is the decoder's best-scored mask when it returned three, else its single mask; the heads read the tokens of that
mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from usam.entropy import mask_entropy
from usam.errors import UsamError
from usam.head_table import Pairing
from usam.heads import UncertaintyHeads, refuse_signal_heads
from usam.predictor import head_features, head_token_indices
from usam.transformers_adapter.capture import TransformersTokenCapture


@dataclasses.dataclass
class VideoFramePrediction:
    """The tracked masks of one frame with their estimates; per-object arrays in the order of ``object_ids``.

    Attributes:
        frame_idx: The frame.
        object_ids: The tracked objects.
        low_res_logits: (objects, h, w) the model's mask logits at its resolution (``pred_masks``).
        sam_iou: (objects,) the decoder's IoU prediction for the tracked mask.
        object_score_logits: (objects,) the model's object score logit (> 0: it deems the object visible).
        uncertainty: Head name -> (objects,) estimates for the tracked masks.
        entropy: (objects,) mask entropy H_Std in bits of ``low_res_logits``.
        iou_token: (objects, D) IoU tokens.
        mask_tokens: (objects, 4, D) all four mask tokens.
        mask_token_index: (objects,) the mask token that produced each tracked mask.
        head_token_index: (objects,) the mask token the heads read (depends on the heads' pairing).
    """

    frame_idx: int
    object_ids: list[int]
    low_res_logits: np.ndarray
    sam_iou: np.ndarray
    object_score_logits: np.ndarray
    uncertainty: dict[str, np.ndarray]
    entropy: np.ndarray
    iou_token: np.ndarray
    mask_tokens: np.ndarray
    mask_token_index: np.ndarray
    head_token_index: np.ndarray


class UncertainVideo:
    """Run a transformers video model with token hooks and give every frame's tracked masks their estimates.

    Args:
        model: A transformers ``Sam2VideoModel`` (or ``EdgeTamVideoModel``, ``Sam3TrackerVideoModel``).
        heads: Heads from :func:`usam.load_heads`, or None (entropy and tokens only).

    Example:
        >>> video = UncertainVideo(model, heads)  # doctest: +SKIP
        >>> first = video.forward(session, frame_idx=0)  # the frame with the prompts  # doctest: +SKIP
        >>> for frame in video.propagate(session):  # doctest: +SKIP
        ...     frame.uncertainty["iou_large"]
    """

    def __init__(self, model: Any, heads: UncertaintyHeads | None = None) -> None:
        refuse_signal_heads(heads, "video tracking")
        self.model = model
        device = next(model.parameters()).device
        self.heads = heads.to(device).eval() if heads is not None else None
        # (frame, object id) -> (iou token, mask tokens, token index, IoU prediction) of outputs the model may reuse.
        self._recorded: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, int, float]] = {}
        self._frame_objects: list[list[int]] = []

    def forward(self, session: Any, frame_idx: int) -> VideoFramePrediction:
        """``model(inference_session=session, frame_idx=frame_idx)`` with the estimates of its tracked masks."""
        with self._capture() as capture:
            output = self.model(inference_session=session, frame_idx=frame_idx)
        return self._frame_prediction(session, output, capture, 0)

    def propagate(self, session: Any, **kwargs: Any) -> Iterator[VideoFramePrediction]:
        """``model.propagate_in_video_iterator(session, **kwargs)``, each frame with its estimates.

        The hooks exist while the iteration runs; they are removed when it ends, fails or is closed early.
        """
        with self._capture() as capture:
            seen = 0
            for output in self.model.propagate_in_video_iterator(session, **kwargs):
                prediction = self._frame_prediction(session, output, capture, seen)
                seen = len(capture.calls)
                yield prediction

    def _capture(self) -> _FrameCapture:
        return _FrameCapture(self)

    def _frame_prediction(
        self, session: Any, output: Any, capture: TransformersTokenCapture, first_call: int
    ) -> VideoFramePrediction:
        frame_idx = int(output.frame_idx)
        object_ids = [int(object_id) for object_id in output.object_ids]
        running = self._frame_objects.pop(0) if self._frame_objects else []
        calls = capture.calls[first_call:]
        scores = capture.scores[first_call:]
        if len(calls) != len(running):
            raise UsamError(
                f"frame {frame_idx}: captured {len(calls)} decoder calls for {len(running)} objects; this video model "
                "does not run its decoder once per object as usam expects"
            )
        for object_id, call, call_scores in zip(running, calls, scores, strict=True):
            # The tracked mask: the best-scored of three, or the single one.
            best = int(call_scores[0].argmax()) if call.mask_token_index.shape[1] > 1 else 0
            token = int(call.mask_token_index[0, best])
            sam_iou = float(call_scores[0, best])
            self._recorded[(frame_idx, object_id)] = (call.iou_token[0], call.mask_tokens[0], token, sam_iou)
        missing = [object_id for object_id in object_ids if (frame_idx, object_id) not in self._recorded]
        if missing:
            raise UsamError(
                f"frame {frame_idx}: no tokens for objects {missing}; their outputs were computed before usam's hooks "
                "were on (run the prompted frame through UncertainVideo.forward)"
            )
        recorded = [self._recorded[(frame_idx, object_id)] for object_id in object_ids]
        iou_token = torch.stack([entry[0] for entry in recorded])
        mask_tokens = torch.stack([entry[1] for entry in recorded])
        token_index = torch.tensor([[entry[2]] for entry in recorded], device=iou_token.device)
        pairing = self.heads.metadata.pairing if self.heads is not None else Pairing.TRUE
        head_index = head_token_indices(token_index, pairing)
        uncertainty: dict[str, np.ndarray] = {}
        if self.heads is not None:
            with torch.no_grad():
                features = head_features(iou_token, mask_tokens, head_index, self.heads.metadata.inputs)
                values = self.heads(features).float().cpu().numpy()
            uncertainty = {name: values[index].reshape(-1) for index, name in enumerate(self.heads.names)}
        low_res = output.pred_masks.detach().float().cpu()[:, 0]
        return VideoFramePrediction(
            frame_idx=frame_idx,
            object_ids=object_ids,
            low_res_logits=low_res.numpy(),
            sam_iou=np.array([entry[3] for entry in recorded], np.float32),
            object_score_logits=output.object_score_logits.detach().float().cpu().numpy().reshape(len(object_ids)),
            uncertainty=uncertainty,
            entropy=mask_entropy(low_res).numpy(),
            iou_token=iou_token.float().cpu().numpy(),
            mask_tokens=mask_tokens.float().cpu().numpy(),
            mask_token_index=token_index[:, 0].cpu().numpy(),
            head_token_index=head_index[:, 0].cpu().numpy(),
        )


class _FrameCapture(TransformersTokenCapture):
    """Token capture plus a hook on the video model that notes, per frame, which objects will run the decoder."""

    def __init__(self, video: UncertainVideo) -> None:
        super().__init__(video.model)
        self.video = video

    def __enter__(self) -> _FrameCapture:
        super().__enter__()
        self.video._frame_objects = []
        self._handles.append(self.video.model.register_forward_pre_hook(self._on_frame, with_kwargs=True))
        return self

    def _on_frame(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        session = kwargs.get("inference_session", args[0] if args else None)
        frame_idx = kwargs.get("frame_idx", args[1] if len(args) > 1 else None)
        running = []
        for object_index in range(session.get_obj_num()):
            object_id = session.obj_idx_to_id(object_index)
            # The model reuses a conditioning frame's output of an object without new inputs (no decoder call).
            cached = frame_idx in session.output_dict_per_obj[object_index]["cond_frame_outputs"]
            if object_id in session.obj_with_new_inputs or not cached:
                running.append(int(object_id))
        self.video._frame_objects.append(running)
