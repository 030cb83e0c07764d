"""The transformers backend of :class:`usam.UncertainSAM`: what the wrapper asks of a predictor and its model.

These functions have the names and meaning of their counterparts in :mod:`usam.sam2_adapter`;
:class:`~usam.transformers_adapter.image_predictor.TransformersImagePredictor` names this module as its
``usam_adapter``, and the wrapper calls it instead of the SAM2 adapter. Precision and autocast are the same for
both backends (:func:`usam.sam2_adapter.effective_precision`, :func:`usam.sam2_adapter.inference_context`).
"""

from __future__ import annotations

from typing import Any

import torch

from usam.errors import InvalidInputError
from usam.model_card import ClickMapPrompting
from usam.sam2_adapter import effective_precision, inference_context
from usam.transformers_adapter.capture import TransformersTokenCapture, mask_decoder_of
from usam.transformers_adapter.image_predictor import TransformersImagePredictor

__all__ = [
    "DecoderTokenCapture",
    "check_image_predictor",
    "click_map_prompting_of",
    "describe_model",
    "effective_precision",
    "image_size_of",
    "inference_context",
    "low_res_mask_size",
    "mask_decoder_of",
    "model_name_of",
    "sam2_version_of",
    "token_dim_of",
]


class DecoderTokenCapture(TransformersTokenCapture):
    """:class:`TransformersTokenCapture` with the SAM2 adapter's signature (``multimask_output`` is read per call)."""

    def __init__(self, predictor: Any, *, multimask_output: bool | None = None) -> None:
        super().__init__(predictor)


def check_image_predictor(predictor: Any) -> None:
    """Refuse anything but a :class:`TransformersImagePredictor`.

    Raises:
        InvalidInputError: Naming the type given.
    """
    if not isinstance(predictor, TransformersImagePredictor):
        given = f"{type(predictor).__module__}.{type(predictor).__qualname__}"
        raise InvalidInputError(
            f"the transformers backend wraps a usam.transformers_adapter.TransformersImagePredictor, got a {given}"
        )


def image_size_of(predictor: TransformersImagePredictor) -> tuple[int, int] | None:
    """(H, W) of the image the predictor holds, or None."""
    return predictor._orig_hw[-1] if predictor._is_image_set else None


def token_dim_of(predictor: Any) -> int:
    """Size of the decoder tokens (256 for every released SAM2)."""
    return int(mask_decoder_of(predictor).hidden_size)


def low_res_mask_size(predictor: Any) -> int:
    """Side of the low-resolution mask logits (256 for 1024-pixel models)."""
    return int(getattr(predictor, "model", predictor).prompt_encoder.mask_input_size[0])


def model_name_of(predictor: Any) -> str | None:
    """The model's name (its Hugging Face id or folder), when known."""
    return getattr(predictor, "name", None)


def sam2_version_of(predictor: Any) -> str | None:
    """``sam2``/``sam2.1`` when the predictor was told, else None (transformers' configs do not record it)."""
    return getattr(predictor, "sam2_version", None)


def click_map_prompting_of(predictor: Any) -> ClickMapPrompting | None:
    """Always None: click-map models are usam test-bed models, built with the SAM2 backend."""
    return None


def describe_model(predictor: Any) -> str:
    """The model in words, for messages."""
    model = getattr(predictor, "model", predictor)
    name = model_name_of(predictor)
    return f"transformers model {name} ({type(model).__name__})" if name else f"the {type(model).__name__}"


def device_of(predictor: Any) -> torch.device:
    """Where the predictor's model runs."""
    return next(mask_decoder_of(predictor).parameters()).device
