"""The token hooks on the SAM2-style decoders of EdgeTAM, the SAM3 tracker and SAM2 video (small random configs)."""

from __future__ import annotations

import importlib

import pytest
import torch

from usam.errors import UsamError
from usam.transformers_adapter import TransformersTokenCapture, import_transformers

try:
    TRANSFORMERS = import_transformers()
except UsamError:
    pytest.skip("transformers is not installed (pip install 'usam[transformers]')", allow_module_level=True)

# Model family -> transformers' module and class prefix.
FAMILIES = {"edgetam": "EdgeTam", "sam3_tracker": "Sam3Tracker", "sam2_video": "Sam2Video", "sam2": "Sam2"}


def _decoder(family: str) -> torch.nn.Module:
    prefix = FAMILIES[family]
    config = getattr(TRANSFORMERS, f"{prefix}MaskDecoderConfig")(mlp_dim=64, iou_head_hidden_dim=32)
    config._attn_implementation = "eager"
    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    torch.manual_seed(0)
    return getattr(module, f"{prefix}MaskDecoder")(config).eval()


def _decoder_inputs(batch: int, point_batch: int, side: int = 8) -> dict:
    generator = torch.Generator().manual_seed(1)

    def noise(*shape):
        return torch.randn(*shape, generator=generator)

    return {
        "image_embeddings": noise(batch, 256, side, side),
        "image_positional_embeddings": noise(batch, 256, side, side),
        "sparse_prompt_embeddings": noise(batch, point_batch, 3, 256),
        "dense_prompt_embeddings": noise(batch, 256, side, side),
        "high_resolution_features": [noise(batch, 32, 4 * side, 4 * side), noise(batch, 64, 2 * side, 2 * side)],
    }


@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_hooks_capture_the_tokens_of_every_sam2_style_decoder(family, multimask_output):
    decoder = _decoder(family)
    holder = torch.nn.Module()
    holder.mask_decoder = decoder  # the layout of the models: model.mask_decoder
    batch, point_batch = 2, 3
    with TransformersTokenCapture(holder) as capture, torch.no_grad():
        _, scores, *_ = decoder(**_decoder_inputs(batch, point_batch), multimask_output=multimask_output)
    call = capture.single_call()
    rows = batch * point_batch
    assert call.iou_token.shape == (rows, 256)
    assert call.mask_tokens.shape == (rows, 4, 256)
    assert capture.point_batch_sizes == [point_batch]
    masks_per_prompt = 3 if multimask_output else 1
    assert call.mask_token_index.shape == (rows, masks_per_prompt)
    with torch.no_grad():
        all_scores = decoder.iou_prediction_head(call.iou_token)  # (rows, 4), flattened image-major
    # Each returned score is the IoU head's output for the token that produced the mask.
    expected = all_scores.gather(1, call.mask_token_index)
    torch.testing.assert_close(scores.reshape(rows, masks_per_prompt), expected)
    if multimask_output:
        assert call.mask_token_index.tolist() == [[1, 2, 3]] * rows
    # The hooks are gone afterwards.
    assert all(not sub._forward_hooks and not sub._forward_pre_hooks for sub in decoder.modules())


def test_a_model_without_a_sam2_decoder_is_refused():
    with pytest.raises(UsamError, match="SAM2-style mask decoder"):
        TransformersTokenCapture(torch.nn.Linear(2, 2))


def _small_sam3_tracker():
    # 112-pixel images, 14-pixel patches: an 8 x 8 token grid, FPN levels of 32, 16 and 8.
    vit = {
        "model_type": "sam3_vit_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 112,
        "patch_size": 14,
        "window_size": 4,
        "global_attn_indexes": [1],
        "pretrain_image_size": 56,
    }
    config = TRANSFORMERS.Sam3TrackerConfig(
        vision_config={"backbone_config": vit, "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]]},
        prompt_encoder_config={"image_size": 112, "patch_size": 14},
        mask_decoder_config={"mlp_dim": 64},
    )
    return TRANSFORMERS.Sam3TrackerModel(config)


def _small_edgetam():
    pytest.importorskip("timm", reason="EdgeTAM's image encoder needs timm (pip install timm)")
    backbone = TRANSFORMERS.TimmWrapperConfig(
        architecture="repvit_m1", model_args={"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]}
    )
    config = TRANSFORMERS.EdgeTamConfig(
        vision_config={"backbone_config": backbone, "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]]},
        prompt_encoder_config={"image_size": 128},
        mask_decoder_config={"mlp_dim": 64},
    )
    return TRANSFORMERS.EdgeTamModel(config)


@pytest.mark.parametrize("build", [_small_sam3_tracker, _small_edgetam], ids=["Sam3TrackerModel", "EdgeTamModel"])
def test_uncertain_sam_runs_on_other_sam2_style_models(build, rgb_image):
    from usam import UncertainSAM
    from usam.heads import random_heads
    from usam.transformers_adapter import TransformersImagePredictor

    torch.manual_seed(0)
    model = build().eval()
    wrapper = UncertainSAM(TransformersImagePredictor(model), random_heads(seed=0))
    wrapper.set_image(rgb_image)
    height, width = rgb_image.shape[:2]
    result = wrapper.predict(point_coords=[[[10.0, 20.0]], [[50.0, 30.0]]], point_labels=[[1], [1]])
    assert result.masks.shape == (2, 3, height, width)
    assert result.iou_token.shape == (2, 256)
    assert result.mask_tokens.shape == (2, 4, 256)
    assert result.mask_token_index.tolist() == [[1, 2, 3], [1, 2, 3]]
    assert result.uncertainty["model_gap"].shape == (2, 3)
    single = wrapper.predict(box=[5.0, 5.0, 50.0, 40.0], multimask_output=False)
    assert single.masks.shape == (1, height, width)
    assert single.sam_scores.shape == single.mask_token_index.shape == (1,)
    assert all(not sub._forward_hooks and not sub._forward_pre_hooks for sub in model.modules())
