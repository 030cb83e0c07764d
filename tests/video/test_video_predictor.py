"""UncertainVideoSAM on a random-weight SAM2 video predictor and a three-frame JPEG folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_small_video_predictor, reference_head, write_authors_heads, write_jpeg_video
from usam import sam2_adapter
from usam.errors import InvalidInputError
from usam.head_table import HEAD_NAMES, is_gap_head
from usam.heads import HEAD_INPUTS, load_heads, random_heads
from usam.video import ESTIMATES_KEY, NO_TOKEN, UncertainVideoSAM, check_video_source

CLICK = [[60, 50]]  # on the red block
BOX = [10, 10, 30, 30]  # the green square


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    return write_jpeg_video(tmp_path_factory.mktemp("video") / "frames")


@pytest.fixture(scope="module")
def video_predictor():
    return build_small_video_predictor()


@pytest.fixture(scope="module")
def authors_heads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heads") / "sam2.1"
    states = write_authors_heads(folder)
    return load_heads(folder), states


def _snapshot(predictor):
    return {
        "weights": {name: value.clone() for name, value in predictor.state_dict().items()},
        "hooks": list(sam2_adapter.iter_hooks(predictor)),
        "attributes": sorted(vars(predictor)),
        "training": predictor.training,
    }


def _object_score_in_state(state, obj_id, frame):
    """SAM2's own record of an object's score on a frame (after propagation, or a prompt's temporary output)."""
    obj_idx = state["obj_id_to_idx"][obj_id]
    for outputs in (state["temp_output_dict_per_obj"][obj_idx], state["output_dict_per_obj"][obj_idx]):
        for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
            if frame in outputs[key]:
                return float(outputs[key][frame]["object_score_logits"].reshape(()))
    raise AssertionError(f"SAM2 holds no output of object {obj_id} on frame {frame}")


@pytest.fixture(scope="module")
def tracked(video_predictor, video_folder, authors_heads):
    """Two objects prompted on frame 0, tracked forward, object 1 corrected on frame 1; a second video tracked in
    reverse from prompts on its last frame; a plain SAM2 prompt on the same predictor for comparison."""
    heads, _ = authors_heads
    predictor = video_predictor
    before = _snapshot(predictor)
    model = UncertainVideoSAM(predictor, heads)
    run = {"model": model, "before": before, "hooks_between_frames": []}
    state = model.init_state(video_folder)
    run["prompt_click"] = model.add_new_points_or_box(state, 0, 1, points=CLICK, labels=[1])
    run["prompt_box"] = model.add_new_points_or_box(state, 0, 2, box=BOX)
    run["forward"] = []
    for result in model.propagate_in_video(state):
        run["hooks_between_frames"].append(list(sam2_adapter.iter_hooks(predictor)))
        run["forward"].append(result)
    run["reprompt"] = model.add_new_points_or_box(state, 1, 1, points=[[60, 50], [100, 20]], labels=[1, 0])
    run["state"] = state
    reverse_state = model.init_state(video_folder)
    model.add_new_points_or_box(reverse_state, 2, 1, points=[[75, 50]], labels=[1])
    model.add_new_points_or_box(reverse_state, 2, 2, box=BOX)
    run["reverse"] = list(model.propagate_in_video(reverse_state, start_frame_idx=2, reverse=True))
    run["reverse_state"] = reverse_state
    plain_state = predictor.init_state(str(video_folder))
    run["plain_masks"] = predictor.add_new_points_or_box(plain_state, 0, 1, points=CLICK, labels=[1])[2]
    run["after"] = _snapshot(predictor)
    return run


def _all_results(run):
    return [run["prompt_click"], run["prompt_box"], *run["forward"], run["reprompt"], *run["reverse"]]


def test_several_objects_are_tracked_forward_with_finite_estimates(tracked):
    forward = tracked["forward"]
    assert [result.frame_index for result in forward] == [0, 1, 2]
    for result in forward:
        assert result.object_ids == [1, 2]
        assert result.masks.shape == (2, 96, 120)
        assert result.masks.dtype == bool
        for values in [result.sam_iou, result.entropy, result.object_score_logits, *result.uncertainty.values()]:
            assert values.shape == (2,)
            assert np.isfinite(values).all()
        assert set(result.uncertainty) == set(HEAD_NAMES)
    assert forward[0].prompted.tolist() == [True, True]
    assert forward[1].prompted.tolist() == forward[2].prompted.tolist() == [False, False]
    # A prompted frame is not decoded again: propagation reports what the prompt produced.
    np.testing.assert_array_equal(forward[0].masks, tracked["prompt_box"].masks)
    for name in HEAD_NAMES:
        np.testing.assert_array_equal(forward[0].uncertainty[name], tracked["prompt_box"].uncertainty[name])


def test_sam_iou_and_token_index_are_those_of_the_decoder_token_that_produced_the_mask(tracked, video_predictor):
    # The decoder's own IoU head, applied to the captured IoU token, predicts one IoU per mask token; SAM2's
    # reported IoU must be the one of the token usam names.
    iou_head = video_predictor.sam_mask_decoder.iou_prediction_head
    for result in _all_results(tracked):
        for row in range(len(result.object_ids)):
            token = int(result.mask_token_index[row])
            assert 0 <= token <= 3
            with torch.no_grad():
                per_token = iou_head(torch.from_numpy(result.iou_token[row])[None])[0]
            assert per_token[token].item() == pytest.approx(float(result.sam_iou[row]), abs=1e-5)
    # One click on a fresh frame: SAM2 decodes three masks and keeps the best, never token 0.
    assert tracked["prompt_click"].mask_token_index[0] in (1, 2, 3)


def test_object_scores_are_sam2s_own(tracked):
    state = tracked["state"]
    for result in tracked["forward"][1:]:
        for row, obj_id in enumerate(result.object_ids):
            if obj_id == 1 and result.frame_index == 1:
                continue  # corrected afterwards; checked below
            expected = _object_score_in_state(state, obj_id, result.frame_index)
            assert result.object_score_logits[row] == pytest.approx(expected, abs=1e-6)
    reprompt = tracked["reprompt"]
    assert reprompt.object_score_logits[0] == pytest.approx(_object_score_in_state(state, 1, 1), abs=1e-6)


def test_estimates_equal_a_recomputation_from_the_captured_tokens(tracked, authors_heads):
    _, states = authors_heads
    checked = 0
    for result in _all_results(tracked):
        # The authors' heads pair returned mask k with token k: the token before the producing one.
        np.testing.assert_array_equal(result.head_token_index, np.maximum(result.mask_token_index - 1, 0))
        for row in range(len(result.object_ids)):
            token = result.head_token_index[row]
            features = np.concatenate([result.iou_token[row], result.mask_tokens[row, token]]).astype(np.float64)
            for name in HEAD_NAMES:
                expected = reference_head(states[name], features[None], is_gap_head(name))[0]
                assert result.uncertainty[name][row] == pytest.approx(expected, abs=1e-4)
                checked += 1
    assert checked >= 9 * 2 * 8


def test_reprompting_mid_video_replaces_only_that_objects_estimates(tracked):
    reprompt, tracked_frame = tracked["reprompt"], tracked["forward"][1]
    assert reprompt.frame_index == 1
    assert reprompt.object_ids == [1, 2]
    assert reprompt.prompted.tolist() == [True, False]
    assert not np.allclose(reprompt.iou_token[0], tracked_frame.iou_token[0])
    np.testing.assert_array_equal(reprompt.iou_token[1], tracked_frame.iou_token[1])
    np.testing.assert_array_equal(reprompt.uncertainty["model_gap"][1], tracked_frame.uncertainty["model_gap"][1])


def test_reverse_propagation_reports_every_frame_backwards(tracked):
    reverse = tracked["reverse"]
    assert [result.frame_index for result in reverse] == [2, 1, 0]
    assert reverse[0].prompted.tolist() == [True, True]
    for result in reverse[1:]:
        assert result.prompted.tolist() == [False, False]
        assert np.isfinite(result.sam_iou).all()
        assert np.isfinite(result.uncertainty["iou_large"]).all()
    keys = set(tracked["reverse_state"][ESTIMATES_KEY])
    assert keys == {(frame, obj_id) for frame in range(3) for obj_id in (1, 2)}


def test_the_predictor_is_left_exactly_as_it_was(tracked):
    before, after = tracked["before"], tracked["after"]
    assert after["hooks"] == before["hooks"] == []
    assert after["attributes"] == before["attributes"]
    assert after["training"] == before["training"]
    for name, value in before["weights"].items():
        assert torch.equal(after["weights"][name], value), name
    # No hooks either while the caller holds a frame between two steps of the propagation.
    assert tracked["hooks_between_frames"] == [[], [], []]
    # And SAM2 computes exactly what it computes without usam.
    np.testing.assert_array_equal(tracked["prompt_click"].masks[0], tracked["plain_masks"][0, 0].numpy() > 0)


def test_remove_object_and_reset_state_drop_the_estimates(tracked):
    model, state = tracked["model"], tracked["reverse_state"]
    obj_ids, _ = model.remove_object(state, 2)
    assert list(obj_ids) == [1]
    assert {obj_id for _, obj_id in state[ESTIMATES_KEY]} == {1}
    model.reset_state(state)
    assert state[ESTIMATES_KEY] == {}
    assert state["obj_ids"] == []


def test_a_given_mask_is_reported_as_given(video_predictor, video_folder, authors_heads):
    model = UncertainVideoSAM(video_predictor, authors_heads[0])
    state = model.init_state(video_folder)
    mask = np.zeros((96, 120), bool)
    mask[30:70, 40:90] = True
    result = model.add_new_mask(state, 0, 5, mask)
    assert result.mask_token_index.tolist() == [NO_TOKEN]
    assert result.sam_iou.tolist() == [1.0]
    assert all(np.isnan(values).all() for values in result.uncertainty.values())  # no token produced the mask
    assert np.isfinite(result.entropy).all()
    assert result.object_score_logits[0] > 0
    overlap = np.logical_and(result.masks[0], mask).sum() / np.logical_or(result.masks[0], mask).sum()
    assert overlap > 0.9


def test_bad_frames_and_predictors_are_refused(video_predictor, video_folder, tmp_path, small_sam2):
    model = UncertainVideoSAM(video_predictor)
    state = model.init_state(video_folder)
    with pytest.raises(InvalidInputError, match="frame index"):
        model.add_new_points_or_box(state, 3, 1, points=CLICK, labels=[1])
    with pytest.raises(InvalidInputError, match="SAM2VideoPredictor"):
        UncertainVideoSAM(sam2_adapter.make_image_predictor(small_sam2))
    signal_heads = random_heads(["iou_tiny"], sam2_version="sam2.1", inputs=HEAD_INPUTS)
    with pytest.raises(InvalidInputError, match=r"video tracking gives the heads tokens only.*--inputs tokens"):
        UncertainVideoSAM(video_predictor, signal_heads)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="no JPEG frames"):
        check_video_source(empty)
    (tmp_path / "named").mkdir()
    (tmp_path / "named" / "first.jpg").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="frame number"):
        check_video_source(tmp_path / "named")
    with pytest.raises(InvalidInputError, match="does not exist"):
        check_video_source(tmp_path / "missing")
    (tmp_path / "clip.mp4").write_bytes(b"")
    try:
        import decord  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(InvalidInputError, match="decord"):
            model.init_state(tmp_path / "clip.mp4")
