"""``TransformersImagePredictor``: a transformers SAM2-style model behind the interface of SAM2's image predictor.

It speaks ``SAM2ImagePredictor``'s ``set_image``/``predict`` (same arguments, same returned arrays), so
:class:`usam.UncertainSAM` wraps it like Meta's predictor. The image goes through the model's ``Sam2Processor``
and is encoded once (``get_image_embeddings``); each ``predict`` runs the prompt encoder and mask decoder on the
stored embeddings. B batched objects are transformers' point batch (one image, B prompts); with a ``mask_input``
each object becomes its own image-batch entry, because transformers takes one dense mask per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from usam.devices import select_device
from usam.errors import InvalidInputError, UsamError
from usam.transformers_adapter.capture import mask_decoder_of
from usam.transformers_adapter.imports import import_transformers

LOW_RES_LOGIT_LIMIT = 32.0
"""SAM2's image predictor clamps the low-resolution logits it returns to ±32; so does this one."""


def default_processor(model: Any) -> Any:
    """A ``Sam2Processor`` that resizes to the model's input size (transformers' default is 1024 pixels)."""
    transformers = import_transformers()
    size = int(model.config.prompt_encoder_config.image_size)
    mask_side = int(model.prompt_encoder.mask_input_size[0])
    image_processor = transformers.Sam2ImageProcessor(
        size={"height": size, "width": size}, mask_size={"height": mask_side, "width": mask_side}
    )
    return transformers.Sam2Processor(image_processor=image_processor)


class TransformersImagePredictor:
    """A transformers ``Sam2Model`` (or ``EdgeTamModel``, ``Sam3TrackerModel``) with ``SAM2ImagePredictor``'s API.

    Args:
        model: The transformers model, in eval mode on its device.
        processor: Its ``Sam2Processor``; None builds one for the model's input size.
        name: The model's name in messages and records (default: the name it was loaded from).
        sam2_version: ``sam2``/``sam2.1`` when known, to flag heads trained for another release.

    Example:
        >>> predictor = TransformersImagePredictor.from_pretrained("facebook/sam2.1-hiera-tiny")  # doctest: +SKIP
        >>> predictor.set_image(image)  # doctest: +SKIP
        >>> masks, scores, logits = predictor.predict(point_coords=[[500, 375]], point_labels=[1])  # doctest: +SKIP
    """

    mask_threshold = 0.0

    def __init__(
        self, model: Any, processor: Any | None = None, *, name: str | None = None, sam2_version: str | None = None
    ) -> None:
        mask_decoder_of(model)
        self.model = model
        self.processor = processor if processor is not None else default_processor(model)
        self.name = name or getattr(model.config, "_name_or_path", None) or None
        self.sam2_version = sam2_version
        self.reset_predictor()

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *, device: str | torch.device | None = None, sam2_version: str | None = None
    ) -> TransformersImagePredictor:
        """Load a model and its processor by Hugging Face id or from a folder written by ``save_pretrained``.

        Raises:
            UsamError: transformers is missing, or the model cannot be loaded (the message says why).
        """
        transformers = import_transformers()
        source = str(name_or_path)
        try:
            model = transformers.AutoModel.from_pretrained(source)
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UsamError(f"cannot load the transformers model {source} ({first_line})") from None
        try:
            processor = transformers.AutoProcessor.from_pretrained(source)
        except (OSError, ValueError):
            processor = None  # a folder with the model alone: build the processor for its input size
        model = model.to(select_device(device)).eval()
        return cls(model, processor, name=source, sam2_version=sam2_version)

    @property
    def usam_adapter(self) -> Any:
        """The adapter through which :class:`usam.UncertainSAM` reaches this predictor's model."""
        from usam.transformers_adapter import backend

        return backend

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return next(self.model.parameters()).device

    def reset_predictor(self) -> None:
        """Forget the image."""
        self._is_image_set = False
        self._features: list[torch.Tensor] | None = None
        self._orig_hw: list[tuple[int, int]] = []

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        """Encode an H x W x 3 uint8 RGB image (through the processor, then the vision encoder)."""
        self.reset_predictor()
        # Given as float in [0, 1], the processor resizes without rounding to 8 bits, as SAM2's own predictor does
        # (from uint8 it rounds the resized image: one grey level, enough to move tokens by 1e-2).
        scaled = np.asarray(image, dtype=np.float32) / 255.0
        inputs = self.processor(images=scaled, do_rescale=False, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device)
        self._features = self.model.get_image_embeddings(pixel_values)
        self._orig_hw = [(int(image.shape[0]), int(image.shape[1]))]
        self._is_image_set = True

    @torch.no_grad()
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks exactly as ``SAM2ImagePredictor.predict`` does; arguments and results are the same.

        Returns:
            ``(masks, scores, low_res_logits)``: (…, M, H, W) masks (0/1 float32, or logits with ``return_logits``),
            (…, M) predicted IoUs and (…, M, h, w) low-resolution logits; the object axis is dropped for one object.

        Raises:
            InvalidInputError: No image set, or no prompt.
        """
        if not self._is_image_set:
            raise InvalidInputError("no image is set; call set_image(image) before predict()")
        if point_coords is None and box is None and mask_input is None:
            raise InvalidInputError("no prompt given: pass point_coords with point_labels, a box, or a mask_input")
        height, width = self._orig_hw[0]
        objects = _object_count(point_coords, box, mask_input)
        # transformers takes one dense mask per image: objects with a mask input go on the image axis.
        on_image_axis = mask_input is not None
        layout = (objects, 1) if on_image_axis else (1, objects)
        scale = np.array([width, height], dtype=np.float32) if not normalize_coords else np.ones(2, np.float32)
        prompts: dict[str, Any] = {}
        if point_coords is not None:
            coords = np.asarray(point_coords, dtype=np.float32).reshape(objects, -1, 2) * scale
            labels = np.asarray(point_labels).reshape(objects, -1).astype(np.int64)
            prompts["input_points"] = coords.reshape(*layout, -1, 2).tolist()
            prompts["input_labels"] = labels.reshape(*layout, -1).tolist()
        if box is not None:
            boxes = np.asarray(box, dtype=np.float32).reshape(objects, 4) * np.tile(scale, 2)
            prompts["input_boxes"] = boxes.reshape(*layout, 4).tolist()
        encoded = self.processor(original_sizes=[[height, width]] * layout[0], return_tensors="pt", **prompts)
        inputs = {
            key: encoded[key].to(self.device)
            for key in ("input_points", "input_labels", "input_boxes")
            if key in encoded
        }
        features = self._features
        if on_image_axis:
            masks_in = torch.as_tensor(
                np.asarray(mask_input, dtype=np.float32).reshape(objects, 1, *np.shape(mask_input)[-2:])
            )
            inputs["input_masks"] = masks_in.to(self.device)
            features = [feature.expand(objects, *feature.shape[1:]) for feature in features]
        output = self.model(image_embeddings=features, multimask_output=multimask_output, **inputs)
        low_res = output.pred_masks.flatten(0, 1).float()  # (objects, M, h, w)
        scores = output.iou_scores.flatten(0, 1).float()
        masks = torch.nn.functional.interpolate(low_res, (height, width), mode="bilinear", align_corners=False)
        if not return_logits:
            masks = (masks > self.mask_threshold).float()
        low_res = low_res.clamp(-LOW_RES_LOGIT_LIMIT, LOW_RES_LOGIT_LIMIT)
        # SAM2's predictor drops a leading axis of size one, i.e. the object axis of a single object.
        return tuple(tensor.squeeze(0).cpu().numpy() for tensor in (masks, scores, low_res))  # type: ignore[return-value]


def _object_count(point_coords: Any, box: Any, mask_input: Any) -> int:
    if point_coords is not None:
        shape = np.shape(point_coords)
        return shape[0] if len(shape) == 3 else 1
    if box is not None:
        shape = np.shape(box)
        return shape[0] if len(shape) == 2 else 1
    shape = np.shape(mask_input)
    if len(shape) == 4 and shape[0] > 1:
        raise UsamError("mask inputs alone cannot be batched; give a point or box per mask")
    return 1
