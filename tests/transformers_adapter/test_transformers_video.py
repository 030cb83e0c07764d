"""Per-frame tokens and estimates of a small random ``Sam2VideoModel`` through its propagation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usam.errors import UsamError
from usam.head_table import HEAD_NAMES
from usam.heads import random_heads
from usam.transformers_adapter import import_transformers
from usam.transformers_adapter.video import UncertainVideo

try:
    TRANSFORMERS = import_transformers()
except UsamError:
    pytest.skip("transformers is not installed (pip install 'usam[transformers]')", allow_module_level=True)


@pytest.fixture(scope="module")
def video_model():
    # The small SAM2 of the image tests (128 px, 32-d Hiera trunk) with a one-layer memory attention.
    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": 32,
        "image_size": [128, 128],
        "blocks_per_stage": [1, 1, 2, 1],
        "embed_dim_per_stage": [32, 64, 128, 256],
        "global_attention_blocks": [3],
    }
    config = TRANSFORMERS.Sam2VideoConfig(
        vision_config={
            "backbone_config": backbone,
            "backbone_channel_list": [256, 128, 64, 32],
            "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]],
        },
        prompt_encoder_config={"image_size": 128},
        mask_decoder_config={"mlp_dim": 64},
        image_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[8, 8],
        memory_fuser_intermediate_dim=64,
    )
    torch.manual_seed(0)
    return TRANSFORMERS.Sam2VideoModel(config).eval()


def _session(frames=3):
    size = {"height": 128, "width": 128}
    processor = TRANSFORMERS.Sam2VideoProcessor(
        image_processor=TRANSFORMERS.Sam2ImageProcessor(size=size),
        video_processor=TRANSFORMERS.Sam2VideoVideoProcessor(size=size),
    )
    video = [(np.random.default_rng(index).random((60, 80, 3)) * 255).astype(np.uint8) for index in range(frames)]
    session = processor.init_video_session(video=video, inference_device="cpu")
    processor.add_inputs_to_inference_session(
        session, frame_idx=0, obj_ids=[1, 2], input_points=[[[[10, 20]], [[50, 30]]]], input_labels=[[[1], [1]]]
    )
    return session


def _hook_count(model):
    return sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules())


def test_every_frame_gets_tokens_and_estimates_for_every_object(video_model):
    session = _session()
    video = UncertainVideo(video_model, random_heads(seed=0))
    with torch.no_grad():
        first = video.forward(session, frame_idx=0)
        frames = list(video.propagate(session))
    assert [frame.frame_idx for frame in frames] == [0, 1, 2]
    # Propagation passes the prompted frame again and reuses its output: the same tokens and estimates.
    np.testing.assert_array_equal(frames[0].iou_token, first.iou_token)
    np.testing.assert_array_equal(frames[0].uncertainty["model_gap"], first.uncertainty["model_gap"])
    decoder = video_model.mask_decoder
    for frame in frames:
        assert frame.object_ids == [1, 2]
        assert frame.iou_token.shape == (2, 256)
        assert frame.mask_tokens.shape == (2, 4, 256)
        assert frame.low_res_logits.shape == (2, 32, 32)
        assert set(frame.uncertainty) == set(HEAD_NAMES)
        assert all(values.shape == (2,) for values in frame.uncertainty.values())
        assert frame.entropy.shape == (2,)
        # The video model tracks the best-scored of its three masks: the token the heads read is that mask's.
        with torch.no_grad():
            scores = decoder.iou_prediction_head(torch.from_numpy(frame.iou_token)).numpy()
        assert (frame.mask_token_index >= 1).all()
        np.testing.assert_array_equal(frame.mask_token_index, scores[:, 1:].argmax(axis=1) + 1)
        # Its IoU prediction is that token's score; the object score is the model's own output for the object.
        np.testing.assert_allclose(frame.sam_iou, scores[[0, 1], frame.mask_token_index], atol=1e-6)
        assert frame.object_score_logits.shape == (2,)
    assert _hook_count(video_model) == 0


def test_hooks_are_removed_when_propagation_stops_early(video_model):
    session = _session()
    video = UncertainVideo(video_model)
    with torch.no_grad():
        video.forward(session, frame_idx=0)
        iterator = video.propagate(session)
        next(iterator)
        assert _hook_count(video_model) > 0
        iterator.close()
    assert _hook_count(video_model) == 0


def test_a_prompted_frame_computed_without_the_hooks_is_reported(video_model):
    session = _session()
    with torch.no_grad():
        video_model(inference_session=session, frame_idx=0)  # outside usam: no tokens recorded
        with pytest.raises(UsamError, match=r"UncertainVideo\.forward"):
            list(UncertainVideo(video_model).propagate(session))
    assert _hook_count(video_model) == 0
