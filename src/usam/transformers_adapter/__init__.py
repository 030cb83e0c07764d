"""Everything that touches Hugging Face transformers: SAM2 models loaded through its API.

This package and :mod:`usam.sam2_adapter` are the only parts of usam that touch a model library; transformers is
imported on first use (``pip install 'usam[transformers]'``), so importing this package works without it.

Modules:
    imports: importing transformers (torchvision repair first, a one-line error when it is missing).
    capture: ``TransformersTokenCapture``, temporary hooks on the SAM2-style mask decoder (Sam2, Sam2Video,
        EdgeTAM, SAM3 tracker).
    image_predictor: ``TransformersImagePredictor``, a transformers model behind ``SAM2ImagePredictor``'s API.
    backend: what ``UncertainSAM`` asks of a transformers predictor (the SAM2 adapter's functions).
    video: ``UncertainVideo``, per-frame tokens and estimates of ``Sam2VideoModel``'s propagation.
    convert: Meta's SAM2 weights and config as a transformers ``Sam2Model`` or ``Sam2VideoModel``.
"""

from usam.transformers_adapter.capture import TransformersTokenCapture, mask_decoder_of
from usam.transformers_adapter.convert import (
    convert_sam2_state_dict,
    sam2_config_from_model,
    sam2_to_transformers,
    sam2_video_config_from_model,
    sam2_video_to_transformers,
    video_setting_differences,
)
from usam.transformers_adapter.image_predictor import TransformersImagePredictor, default_processor
from usam.transformers_adapter.imports import INSTALL_HINT, import_transformers
from usam.transformers_adapter.video import UncertainVideo, VideoFramePrediction

__all__ = [
    "INSTALL_HINT",
    "TransformersImagePredictor",
    "TransformersTokenCapture",
    "UncertainVideo",
    "VideoFramePrediction",
    "convert_sam2_state_dict",
    "default_processor",
    "import_transformers",
    "mask_decoder_of",
    "sam2_config_from_model",
    "sam2_to_transformers",
    "sam2_video_config_from_model",
    "sam2_video_to_transformers",
    "video_setting_differences",
]
