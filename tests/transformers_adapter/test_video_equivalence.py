"""Meta's SAM2 video predictor and transformers' ``Sam2VideoModel`` with the same weights track the same way.

A random-weight SAM2 video predictor is converted with ``sam2_video_to_transformers``; both backends get the same
frames (the pixels SAM2 read from the JPEG folder: the two libraries resize images differently) and the same prompts,
and must give, per frame and object, the same masks, SAM2's IoU prediction and object score, the same decoder tokens
and the same usam estimates (the tolerances of the image equivalence test).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import build_small_sam2, build_small_video_predictor, write_jpeg_video
from usam.errors import CheckpointError, UsamError, UsamWarning
from usam.head_table import HEAD_NAMES
from usam.heads import random_heads
from usam.sam2_adapter import iter_hooks
from usam.transformers_adapter import (
    UncertainVideo,
    import_transformers,
    sam2_video_to_transformers,
    video_setting_differences,
)
from usam.video import UncertainVideoSAM

try:
    TRANSFORMERS = import_transformers()
except UsamError:
    pytest.skip("transformers is not installed (pip install 'usam[transformers]')", allow_module_level=True)

CLICK = [[60, 50]]  # on the red block: one click, the decoder returns three masks
BOX = [10, 10, 30, 30]  # the green square: two box corners, one mask (with SAM2's dynamic fallback)
CORRECTION = {"points": [[60, 50], [100, 20]], "labels": [1, 0]}
IMAGE_SIZE = 128


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread: on a shared 2-core machine, two spinning threads make the small models many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    return write_jpeg_video(tmp_path_factory.mktemp("video") / "frames")


@pytest.fixture(scope="module")
def backends():
    """SAM2's video predictor and its transformers conversion (which must not warn: no setting differs)."""
    predictor = build_small_video_predictor(seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UsamWarning)
        model = sam2_video_to_transformers(predictor)
    return predictor, model


@pytest.fixture(scope="module")
def heads():
    return random_heads(seed=2)


@pytest.fixture(scope="module")
def processor():
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    return TRANSFORMERS.Sam2VideoProcessor(
        image_processor=TRANSFORMERS.Sam2ImageProcessor(size=size),
        video_processor=TRANSFORMERS.Sam2VideoVideoProcessor(size=size),
    )


def _session(state):
    """A transformers session on the frames SAM2 loaded into ``state``."""
    return TRANSFORMERS.Sam2VideoInferenceSession(
        video=state["images"], video_height=state["video_height"], video_width=state["video_width"], dtype=torch.float32
    )


def _add_click(processor, session, frame, obj_id, points, labels):
    processor.add_inputs_to_inference_session(
        session, frame_idx=frame, obj_ids=obj_id, input_points=[[points]], input_labels=[[labels]]
    )


def _sam2_low_res(state, frame, object_ids):
    """The low-resolution logits SAM2 keeps for each object on a frame."""
    logits = []
    for obj_id in object_ids:
        outputs = state["output_dict_per_obj"][state["obj_id_to_idx"][obj_id]]
        out = outputs["cond_frame_outputs"].get(frame) or outputs["non_cond_frame_outputs"][frame]
        logits.append(out["pred_masks"][0, 0].float().numpy())
    return np.stack(logits)


def assert_same_frame(expected, actual, processor, state):
    """SAM2's :class:`usam.video.VideoFrameResult` and transformers' prediction of the same frame agree."""
    assert actual.frame_idx == expected.frame_index
    assert actual.object_ids == expected.object_ids
    np.testing.assert_allclose(
        actual.low_res_logits, _sam2_low_res(state, expected.frame_index, expected.object_ids), atol=1e-4
    )
    masks = processor.post_process_masks(
        [torch.from_numpy(actual.low_res_logits)[:, None]], [[state["video_height"], state["video_width"]]]
    )[0][:, 0]
    assert masks.shape == expected.masks.shape
    # Logits within float tolerance can still fall on either side of 0 at a pixel or two.
    assert (masks.numpy() != expected.masks).mean() <= 1e-3
    np.testing.assert_allclose(actual.sam_iou, expected.sam_iou, atol=1e-5)
    np.testing.assert_allclose(actual.object_score_logits, expected.object_score_logits, atol=1e-5)
    np.testing.assert_allclose(actual.iou_token, expected.iou_token, atol=1e-4)
    np.testing.assert_allclose(actual.mask_tokens, expected.mask_tokens, atol=1e-4)
    np.testing.assert_array_equal(actual.mask_token_index, expected.mask_token_index)
    np.testing.assert_array_equal(actual.head_token_index, expected.head_token_index)
    assert set(actual.uncertainty) == set(expected.uncertainty) == set(HEAD_NAMES)
    for name in HEAD_NAMES:
        np.testing.assert_allclose(actual.uncertainty[name], expected.uncertainty[name], atol=1e-5)
    np.testing.assert_allclose(actual.entropy, expected.entropy, atol=1e-4)


@pytest.fixture(scope="module")
def forward_run(backends, heads, processor, video_folder):
    """Object 1 clicked and object 2 boxed on frame 0, then tracked forward, in both backends."""
    predictor, model = backends
    sam2 = UncertainVideoSAM(predictor, heads)
    state = sam2.init_state(video_folder)
    expected = [sam2.add_new_points_or_box(state, 0, 1, points=CLICK, labels=[1])]
    expected.append(sam2.add_new_points_or_box(state, 0, 2, box=BOX))
    expected += list(sam2.propagate_in_video(state))

    # transformers takes the prompts of one call for all the objects it names: one object at a time, as in SAM2.
    session = _session(state)
    video = UncertainVideo(model, heads)
    with torch.no_grad():
        _add_click(processor, session, 0, 1, CLICK, [1])
        actual = [video.forward(session, frame_idx=0)]
        processor.add_inputs_to_inference_session(session, frame_idx=0, obj_ids=2, input_boxes=[[BOX]])
        actual.append(video.forward(session, frame_idx=0))
        actual += list(video.propagate(session))
    return {"expected": expected, "actual": actual, "state": state}


def test_prompts_and_forward_tracking_agree(forward_run, processor):
    expected, actual = forward_run["expected"], forward_run["actual"]
    # The two prompts (frame 0 after each), then frames 0, 1, 2 of the propagation.
    assert [frame.frame_index for frame in expected] == [0, 0, 0, 1, 2]
    assert [frame.object_ids for frame in expected] == [[1], [1, 2], [1, 2], [1, 2], [1, 2]]
    for sam2_frame, transformers_frame in zip(expected, actual, strict=True):
        assert_same_frame(sam2_frame, transformers_frame, processor, forward_run["state"])
    # The comparison saw masks and a tracked decode of every object on every frame after the prompt.
    assert all(frame.masks.any(axis=(1, 2)).all() for frame in expected)
    assert all((frame.mask_token_index >= 0).all() for frame in expected[3:])


def test_reverse_tracking_agrees(backends, heads, processor, video_folder):
    predictor, model = backends
    sam2 = UncertainVideoSAM(predictor, heads)
    state = sam2.init_state(video_folder)
    expected = [sam2.add_new_points_or_box(state, 2, 1, points=[[75, 50]], labels=[1])]
    expected += list(sam2.propagate_in_video(state, start_frame_idx=2, reverse=True))
    session = _session(state)
    video = UncertainVideo(model, heads)
    with torch.no_grad():
        _add_click(processor, session, 2, 1, [[75, 50]], [1])
        actual = [video.forward(session, frame_idx=2)]
        actual += list(video.propagate(session, start_frame_idx=2, reverse=True))
    assert [frame.frame_idx for frame in actual] == [2, 2, 1, 0]
    for sam2_frame, transformers_frame in zip(expected, actual, strict=True):
        assert_same_frame(sam2_frame, transformers_frame, processor, state)


@pytest.mark.xfail(
    strict=True,
    reason="a click on a frame that was already tracked: SAM2's add_new_points_or_box feeds the frame's previous "
    "mask logits to the decoder as a mask prompt (prev_sam_mask_logits); transformers' Sam2VideoModel.forward "
    "does not pass them (transformers 5.24)",
)
def test_a_correction_click_on_a_tracked_frame_agrees(backends, heads, processor, video_folder):
    predictor, model = backends
    sam2 = UncertainVideoSAM(predictor, heads)
    state = sam2.init_state(video_folder)
    sam2.add_new_points_or_box(state, 0, 1, points=CLICK, labels=[1])
    list(sam2.propagate_in_video(state))
    expected = sam2.add_new_points_or_box(state, 1, 1, **CORRECTION)
    session = _session(state)
    video = UncertainVideo(model, heads)
    with torch.no_grad():
        _add_click(processor, session, 0, 1, CLICK, [1])
        video.forward(session, frame_idx=0)
        list(video.propagate(session))
        _add_click(processor, session, 1, 1, CORRECTION["points"], CORRECTION["labels"])
        actual = video.forward(session, frame_idx=1)
    assert_same_frame(expected, actual, processor, state)


def test_no_hooks_are_left_on_either_model(backends, forward_run):
    predictor, model = backends
    assert list(iter_hooks(predictor)) == []
    assert list(iter_hooks(model)) == []


def test_the_conversion_loads_every_memory_weight(backends):
    predictor, model = backends
    own = predictor.state_dict()
    converted = model.state_dict()
    # A few of the renamed memory weights hold SAM2's values (strict loading already refused missing keys).
    pairs = {
        "maskmem_tpos_enc": "memory_temporal_positional_encoding",
        "no_obj_embed_spatial": "occlusion_spatial_embedding_parameter",
        "obj_ptr_proj.layers.1.weight": "object_pointer_proj.layers.0.weight",
        "memory_encoder.mask_downsampler.encoder.12.weight": "memory_encoder.mask_downsampler.final_conv.weight",
        "memory_encoder.mask_downsampler.encoder.4.bias": "memory_encoder.mask_downsampler.layers.1.layer_norm.bias",
        "memory_encoder.out_proj.weight": "memory_encoder.projection.weight",
        "memory_attention.layers.0.cross_attn_image.out_proj.weight": "memory_attention.layers.0.cross_attn_image"
        ".o_proj.weight",
    }
    for sam2_key, transformers_key in pairs.items():
        torch.testing.assert_close(converted[transformers_key], own[sam2_key], rtol=0, atol=0)
    assert model.config.memory_attention_rope_feat_sizes == [IMAGE_SIZE // 16, IMAGE_SIZE // 16]
    assert model.config.num_maskmem == predictor.num_maskmem


def test_settings_transformers_lacks_are_named_in_a_warning():
    predictor = build_small_video_predictor(seed=1)
    predictor.fill_hole_area = 8
    predictor.memory_temporal_stride_for_eval = 2
    assert video_setting_differences(predictor) == [
        "fill_hole_area=8 (transformers: 0)",
        "memory_temporal_stride_for_eval=2 (transformers: 1)",
    ]
    with pytest.warns(UsamWarning, match=r"fill_hole_area=8.*memory_temporal_stride_for_eval=2"):
        sam2_video_to_transformers(predictor)
    # An image model built without the video predictor's overrides encodes prompted masks without binarizing.
    assert video_setting_differences(build_small_sam2()) == [
        "binarize_mask_from_pts_for_mem_enc=False (transformers: True)"
    ]


def test_a_model_without_video_memory_is_refused():
    with pytest.raises(CheckpointError, match="not laid out like a SAM2 video model"):
        sam2_video_to_transformers(torch.nn.Linear(2, 2))
