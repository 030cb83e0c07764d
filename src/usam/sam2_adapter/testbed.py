"""Training SAM2-architecture models from scratch (the test-bed): SAM2's own modules with gradients.

Part of the SAM2 adapter (the only code that touches ``sam2``). Everything here wires SAM2's modules the way
``SAM2ImagePredictor.set_image`` and ``_predict`` do, batched over images and prompts and with gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from usam.models import get_model_spec
from usam.sam2_adapter import _import_sam2, build_sam2_model

TESTBED_CONFIG_MODEL = "sam2.1-tiny"
"""The released config the test-bed models are built from (``sam2.1_hiera_t.yaml``), shrunk by overrides."""

_TESTBED_TRUNKS: dict[str, dict[str, str]] = {
    "tiny": {
        "embed_dim": "32",
        "stages": "[1,1,2,1]",
        "global_att_blocks": "[3]",
        "backbone_channel_list": "[256,128,64,32]",
    },
    "large": {
        "embed_dim": "48",
        "stages": "[1,2,5,2]",
        "global_att_blocks": "[5,7]",
        "backbone_channel_list": "[384,192,96,48]",
    },
}


def testbed_model_overrides(size: str, image_size: int = 128) -> list[str]:  # noqa: PT028 (not a test)
    """Hydra overrides of ``sam2.1_hiera_t.yaml`` for a test-bed model (the neck keeps d_model 256: 256-d tokens).

    Args:
        size: ``tiny`` or ``large``.
        image_size: Side of the (square) model input.

    Raises:
        InvalidInputError: ``size`` is neither ``tiny`` nor ``large``.
    """
    from usam.errors import InvalidInputError

    trunk = _TESTBED_TRUNKS.get(size)
    if trunk is None:
        raise InvalidInputError(f"a test-bed model size is one of {sorted(_TESTBED_TRUNKS)}, got {size!r}")
    return [
        f"++model.image_size={int(image_size)}",
        # The default 14/7 windows would pad the 8x8 and 4x4 stages of a 128-pixel input.
        "++model.image_encoder.trunk.window_spec=[8,4,8,4]",
        f"++model.image_encoder.trunk.embed_dim={trunk['embed_dim']}",
        f"++model.image_encoder.trunk.stages={trunk['stages']}",
        f"++model.image_encoder.trunk.global_att_blocks={trunk['global_att_blocks']}",
        f"++model.image_encoder.neck.backbone_channel_list={trunk['backbone_channel_list']}",
    ]


def training_image_batch(model: torch.nn.Module, images: Sequence[Any]) -> torch.Tensor:
    """RGB uint8 images (H, W, 3) as the model's input batch, transformed exactly as ``SAM2ImagePredictor`` does."""
    _import_sam2()
    from sam2.utils.transforms import SAM2Transforms

    transforms = SAM2Transforms(resolution=int(model.image_size), mask_threshold=0.0)
    device = next(model.parameters()).device
    return transforms.forward_batch(list(images)).to(device)


@dataclasses.dataclass
class TrainingImageFeatures:
    """What ``set_image`` stores, for a batch of images and with gradients.

    Attributes:
        image_embed: (B, C, h, w) lowest-resolution embedding (``no_mem_embed`` added).
        high_res_feats: The two higher-resolution feature maps, (B, C', 4h, 4w) and (B, C'', 2h, 2w).
    """

    image_embed: torch.Tensor
    high_res_feats: list[torch.Tensor]


def encode_training_images(model: torch.nn.Module, images: torch.Tensor) -> TrainingImageFeatures:
    """The image features of a batch, wired as ``SAM2ImagePredictor.set_image`` does (gradients kept)."""
    backbone_out = model.forward_image(images)
    _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    batch = images.shape[0]
    feats = [
        feat.permute(1, 2, 0).reshape(batch, -1, *feat_size)
        for feat, feat_size in zip(vision_feats[::-1], feat_sizes[::-1], strict=True)
    ][::-1]
    return TrainingImageFeatures(image_embed=feats[-1], high_res_feats=feats[:-1])


@dataclasses.dataclass
class DecoderTrainingOutputs:
    """Differentiable outputs of SAM2's mask decoder for N prompts.

    Attributes:
        mask_logits: (N, 4, h, w) low-resolution logits of all four mask tokens (0: single-mask output).
        iou_predictions: (N, 4) the IoU head's predictions for the four masks.
        object_score_logits: (N, 1) the object-score logits.
    """

    mask_logits: torch.Tensor
    iou_predictions: torch.Tensor
    object_score_logits: torch.Tensor


def decoder_training_outputs(
    model: torch.nn.Module,
    images: torch.Tensor | TrainingImageFeatures,
    point_coords: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    boxes: torch.Tensor | None = None,
    mask_inputs: torch.Tensor | None = None,
    image_index: torch.Tensor | None = None,
) -> DecoderTrainingOutputs:
    """SAM2's mask decoder on N prompts, with gradients: the wiring of ``SAM2ImagePredictor._predict``, batched.

    Args:
        model: A SAM2 model (``SAM2Base``).
        images: The input batch from :func:`training_image_batch`, or its :func:`encode_training_images` features
            (to decode several groups of prompts against one encoder pass).
        point_coords: (N, K, 2) clicks as (x, y) pixels of the model input, or None.
        point_labels: (N, K) SAM2 labels (1 positive, 0 negative, -1 padding), or None.
        boxes: (N, 4) boxes (x0, y0, x1, y1), put before the points as SAM2's predictor does, or None.
        mask_inputs: (N, 1, 4h, 4w) mask-prompt logits, or None (SAM2's "no mask" embedding).
        image_index: (N,) the image of each prompt; default: prompt i belongs to image i.
    """
    features = images if isinstance(images, TrainingImageFeatures) else encode_training_images(model, images)
    concat_points = None if point_coords is None else (point_coords, point_labels)
    if boxes is not None:
        box_coords = boxes.reshape(-1, 2, 2)
        box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(boxes.size(0), 1)
        if concat_points is not None:
            concat_points = (
                torch.cat([box_coords, concat_points[0]], dim=1),
                torch.cat([box_labels, concat_points[1]], dim=1),
            )
        else:
            concat_points = (box_coords, box_labels)
    sparse_embeddings, dense_embeddings = model.sam_prompt_encoder(points=concat_points, boxes=None, masks=mask_inputs)
    num_prompts = sparse_embeddings.shape[0]
    if image_index is None:
        image_index = torch.arange(num_prompts, device=sparse_embeddings.device)
    # One image embedding per prompt (what repeat_image does for a single image), then all four masks.
    masks, iou_predictions, _, object_score_logits = model.sam_mask_decoder.predict_masks(
        image_embeddings=features.image_embed[image_index],
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse_embeddings,
        dense_prompt_embeddings=dense_embeddings,
        repeat_image=False,
        high_res_features=[feat[image_index] for feat in features.high_res_feats],
    )
    return DecoderTrainingOutputs(masks, iou_predictions, object_score_logits)


def build_testbed_model(size: str, *, image_size: int = 128, seed: int = 0, device: str = "cpu") -> torch.nn.Module:
    """A test-bed model with random weights (seeded), ready to train."""
    model = build_sam2_model(
        TESTBED_CONFIG_MODEL,
        device=device,
        random_weights=True,
        seed=seed,
        hydra_overrides=testbed_model_overrides(size, image_size),
    )
    return model


def testbed_config_name() -> str:
    """The sam2 package config the test-bed models are built from."""
    return get_model_spec(TESTBED_CONFIG_MODEL).config
