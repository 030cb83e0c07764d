import dataclasses

import numpy as np
import pytest
import torch

from conftest import build_small_sam2, reference_head, write_authors_heads
from usam import sam2_adapter
from usam.errors import CheckpointError, HeadsFileError, InvalidInputError
from usam.head_table import GAP_HEAD_NAMES, HEAD_NAMES, Pairing
from usam.heads import load_heads, random_heads
from usam.predictor import UncertainSAM


@pytest.fixture(scope="module")
def authors_heads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlps") / "sam2.1"
    states = write_authors_heads(folder, seed=11)
    return load_heads(folder), states


def _with_pairing(heads, pairing):
    heads = heads.select(heads.names)
    heads.metadata = dataclasses.replace(heads.metadata, pairing=pairing)
    return heads


def _recompute(result, states, pairing):
    """Heads' values recomputed from the captured tokens with the authors' MLP, in the given pairing."""
    iou_token = result.iou_token.reshape(-1, 256)
    mask_tokens = result.mask_tokens.reshape(-1, 4, 256)
    produced = result.mask_token_index.reshape(iou_token.shape[0], -1)
    paired = np.maximum(produced - 1, 0) if pairing == Pairing.AS_RELEASED else produced
    features = np.concatenate(
        [
            np.repeat(iou_token[:, None], paired.shape[1], 1),
            np.take_along_axis(mask_tokens, paired[..., None], 1),
        ],
        axis=-1,
    ).astype(np.float64)
    return {
        name: reference_head(state, features, gap=name in GAP_HEAD_NAMES).reshape(result.sam_scores.shape)
        for name, state in states.items()
    }


@pytest.mark.parametrize("pairing", [Pairing.AS_RELEASED, Pairing.TRUE])
@pytest.mark.parametrize(
    "prompt",
    [
        {"point_coords": [[30.0, 40.0]], "point_labels": [1]},
        {"point_coords": [[30.0, 40.0], [80.0, 60.0]], "point_labels": [1, 0]},
        {"box": [20.0, 25.0, 90.0, 80.0]},
        {"box": [20.0, 25.0, 90.0, 80.0], "point_coords": [[50.0, 50.0]], "point_labels": [1]},
        {
            "point_coords": np.array([[[30.0, 40.0]], [[60.0, 50.0]], [[100.0, 20.0]]]),
            "point_labels": np.ones((3, 1)),
        },
        {"box": np.array([[20.0, 25.0, 90.0, 80.0], [0.0, 0.0, 50.0, 50.0]])},
    ],
    ids=["click", "two-clicks", "box", "box+click", "batched-clicks", "batched-boxes"],
)
@pytest.mark.parametrize("multimask_output", [True, False], ids=["multimask", "single"])
def test_estimates_equal_recomputation_from_captured_tokens(
    predictor, rgb_image, authors_heads, pairing, prompt, multimask_output
):
    heads, states = authors_heads
    model = UncertainSAM(predictor, _with_pairing(heads, pairing))
    model.set_image(rgb_image)
    result = model.predict(**prompt, multimask_output=multimask_output)
    assert set(result.uncertainty) == set(HEAD_NAMES)
    expected = _recompute(result, states, pairing)
    for name in HEAD_NAMES:
        assert result.uncertainty[name].shape == result.sam_scores.shape
        np.testing.assert_allclose(result.uncertainty[name], expected[name], atol=3e-5, err_msg=name)
    if multimask_output:
        expected_tokens = [0, 1, 2] if pairing == Pairing.AS_RELEASED else [1, 2, 3]
        assert (result.head_token_index.reshape(-1, 3) == expected_tokens).all()


def test_mask_input_prompts(predictor, rgb_image, authors_heads):
    heads, states = authors_heads
    model = UncertainSAM(predictor, heads)
    model.set_image(rgb_image)
    first = model.predict(point_coords=[[30.0, 40.0]], point_labels=[1])
    best = first.low_res_logits[np.argmax(first.sam_scores)][None]
    only_mask = model.predict(mask_input=best)
    with_click = model.predict(point_coords=[[30.0, 40.0]], point_labels=[1], mask_input=best)
    for result in (only_mask, with_click):
        assert result.sam_scores.shape == (3,)
        expected = _recompute(result, states, Pairing.AS_RELEASED)
        for name in HEAD_NAMES:
            np.testing.assert_allclose(result.uncertainty[name], expected[name], atol=3e-5)
    assert not np.allclose(with_click.iou_token, first.iou_token), "the mask input must change the tokens"


def test_captured_tokens_are_the_decoder_outputs(predictor, rgb_image):
    """An independent capture (a hook on the two-way transformer's output) sees the same tokens."""
    decoder = sam2_adapter.mask_decoder_of(predictor)
    seen = {}
    handle = decoder.transformer.register_forward_hook(lambda module, args, output: seen.update(hs=output[0]))
    try:
        model = UncertainSAM(predictor, None)
        model.set_image(rgb_image)
        result = model.predict(point_coords=[[[30.0, 40.0]], [[70.0, 20.0]]], point_labels=[[1], [1]])
    finally:
        handle.remove()
    hs = seen["hs"].numpy()
    np.testing.assert_array_equal(result.iou_token, hs[:, 1])
    np.testing.assert_array_equal(result.mask_tokens, hs[:, 2:6])
    with torch.no_grad():
        scores = decoder.iou_prediction_head(torch.from_numpy(result.iou_token)).numpy()
    np.testing.assert_allclose(scores[:, 1:], result.sam_scores, atol=1e-6)


@pytest.mark.parametrize("multimask_output", [True, False])
def test_general_and_fast_capture_agree(predictor, rgb_image, multimask_output):
    """The one-hook capture of multimask calls and the per-module hooks of the general path see the same tokens."""
    predictor.set_image(rgb_image)
    prompt = {"point_coords": np.array([[[30.0, 40.0]], [[70.0, 20.0]]]), "point_labels": np.ones((2, 1))}
    captured = []
    for declared in (multimask_output, None):
        with sam2_adapter.DecoderTokenCapture(predictor, multimask_output=declared) as capture:
            predictor.predict(**prompt, multimask_output=multimask_output)
        captured.append(capture.single_call())
    fast, general = captured
    torch.testing.assert_close(fast.iou_token, general.iou_token, rtol=0, atol=0)
    torch.testing.assert_close(fast.mask_tokens, general.mask_tokens, rtol=0, atol=0)
    torch.testing.assert_close(fast.mask_token_index, general.mask_token_index)


def test_batched_call_equals_single_calls(predictor, rgb_image):
    model = UncertainSAM(predictor, random_heads(seed=4))
    model.set_image(rgb_image)
    points = np.array([[[30.0, 40.0]], [[60.0, 50.0]], [[100.0, 20.0]], [[5.0, 90.0]]])
    boxes = np.array([[10.0, 10.0, 60.0, 60.0], [40.0, 30.0, 100.0, 90.0], [0, 0, 119, 95], [50, 50, 70, 70]])
    batched = model.predict(point_coords=points, point_labels=np.ones((4, 1)), box=boxes)
    for index in range(4):
        single = model.predict(point_coords=points[index], point_labels=[1], box=boxes[index])
        np.testing.assert_allclose(batched.entropy[index], single.entropy, atol=1e-5)
        np.testing.assert_allclose(batched.sam_scores[index], single.sam_scores, atol=1e-5)
        np.testing.assert_allclose(batched.iou_token[index], single.iou_token, atol=1e-4)
        for name in HEAD_NAMES:
            np.testing.assert_allclose(batched.uncertainty[name][index], single.uncertainty[name], atol=1e-5)


@pytest.mark.parametrize(("threshold", "fallback"), [(0.0, False), (1.01, True)])
def test_single_mask_reports_the_token_that_produced_it(rgb_image, threshold, fallback):
    sam_model = build_small_sam2(seed=3)
    decoder = sam_model.sam_mask_decoder
    assert decoder.dynamic_multimask_via_stability
    decoder.dynamic_multimask_stability_thresh = threshold  # 0: token 0 always stable; >1: always falls back
    model = UncertainSAM(sam2_adapter.make_image_predictor(sam_model), random_heads(seed=1))
    model.set_image(rgb_image)
    prompt = {"point_coords": [[[30.0, 40.0]], [[90.0, 70.0]]], "point_labels": [[1], [1]]}
    single = model.predict(**prompt, multimask_output=False)
    multi = model.predict(**prompt, multimask_output=True)
    tokens = single.mask_token_index[:, 0]
    if not fallback:
        assert (tokens == 0).all()
        return
    assert (tokens >= 1).all()
    for index, token in enumerate(tokens):
        # The fallback mask is the multimask output of that token, with its score.
        np.testing.assert_allclose(single.low_res_logits[index, 0], multi.low_res_logits[index, token - 1], atol=1e-4)
        assert single.sam_scores[index, 0] == pytest.approx(multi.sam_scores[index, token - 1], abs=1e-6)
        assert single.sam_scores[index, 0] == pytest.approx(multi.sam_scores[index].max(), abs=1e-6)
        # True pairing reads the producing token: the value equals the multimask value of that mask.
        for name in HEAD_NAMES:
            assert single.uncertainty[name][index, 0] == pytest.approx(
                multi.uncertainty[name][index, token - 1], abs=1e-5
            )


def test_predictor_is_left_exactly_as_it_was(predictor, small_sam2, rgb_image):
    predictor.set_image(rgb_image)
    before = predictor.predict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1]))
    hooks_before = list(sam2_adapter.iter_hooks(small_sam2))
    model = UncertainSAM(predictor, random_heads())
    model.set_image(rgb_image)
    model.predict(point_coords=[[30.0, 40.0]], point_labels=[1])
    with pytest.raises(InvalidInputError):
        model.predict(point_coords=[[np.nan, 1.0]], point_labels=[1])
    del model
    assert list(sam2_adapter.iter_hooks(small_sam2)) == hooks_before == []
    after = predictor.predict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1]))
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)


def test_hooks_are_removed_when_predict_fails(predictor, small_sam2, rgb_image):
    model = UncertainSAM(predictor, random_heads())
    model.set_image(rgb_image)

    def fail(module, args):
        raise RuntimeError("boom inside SAM2")

    failing = sam2_adapter.mask_decoder_of(predictor).transformer.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            model.predict(point_coords=[[30.0, 40.0]], point_labels=[1])
        assert list(sam2_adapter.iter_hooks(small_sam2)) == [("sam_mask_decoder.transformer", 1)]
    finally:
        failing.remove()
    assert list(sam2_adapter.iter_hooks(small_sam2)) == []


def test_results_are_owned_by_the_caller(predictor, rgb_image):
    model = UncertainSAM(predictor, random_heads())
    model.set_image(rgb_image)
    first = model.predict(point_coords=[[30.0, 40.0]], point_labels=[1])
    snapshot = dataclasses.replace(
        first,
        uncertainty={name: value.copy() for name, value in first.uncertainty.items()},
        iou_token=first.iou_token.copy(),
        mask_tokens=first.mask_tokens.copy(),
        low_res_logits=first.low_res_logits.copy(),
        masks=first.masks.copy(),
    )
    model.predict(point_coords=[[100.0, 80.0]], point_labels=[1])
    model.set_image(255 - rgb_image)
    model.predict(point_coords=[[10.0, 10.0]], point_labels=[1])
    np.testing.assert_array_equal(first.masks, snapshot.masks)
    np.testing.assert_array_equal(first.low_res_logits, snapshot.low_res_logits)
    np.testing.assert_array_equal(first.entropy, snapshot.entropy)  # first computed only now, after later calls
    assert first.entropy is first.entropy  # computed once, then kept
    np.testing.assert_array_equal(first.iou_token, snapshot.iou_token)
    np.testing.assert_array_equal(first.mask_tokens, snapshot.mask_tokens)
    for name in HEAD_NAMES:
        np.testing.assert_array_equal(first.uncertainty[name], snapshot.uncertainty[name])


def test_uncertainty_maps(predictor, rgb_image):
    model = UncertainSAM(predictor)
    model.set_image(rgb_image)
    result = model.predict(point_coords=[[30.0, 40.0]], point_labels=[1])
    assert result.uncertainty == {}
    low = result.uncertainty_map("low")
    assert low.shape == result.low_res_logits.shape
    full = result.uncertainty_map("image")
    assert full.shape == (3, 96, 120)
    assert full.min() >= 0.0
    assert full.max() <= 1.0
    probabilities = 1 / (1 + np.exp(-result.low_res_logits.astype(np.float64)))
    weighted = (probabilities * low).sum(axis=(1, 2)) / probabilities.sum(axis=(1, 2))
    np.testing.assert_allclose(weighted, result.entropy, rtol=1e-4)
    with pytest.raises(InvalidInputError, match="resolution"):
        result.uncertainty_map("medium")


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({}, "no prompt"),
        ({"point_coords": [[np.nan, 3.0]], "point_labels": [1]}, "NaN"),
        ({"point_coords": [[500.0, 3.0]], "point_labels": [1]}, "outside the image"),
        ({"point_coords": [[-1.0, 3.0]], "point_labels": [1]}, "outside the image"),
        ({"point_coords": [[5.0, 3.0]]}, "point_labels must be given"),
        ({"point_coords": [[5.0, 3.0]], "point_labels": [1, 1]}, "point_labels has shape"),
        ({"point_coords": [5.0, 3.0, 1.0], "point_labels": [1]}, "point_coords must have shape"),
        ({"point_coords": [[5.0, 3.0]], "point_labels": [7]}, "point_labels must be"),
        ({"box": [50.0, 10.0, 10.0, 60.0]}, "x0 <= x1"),
        ({"box": [0.0, 10.0, 10.0, 960.0]}, "outside the image"),
        ({"box": [0.0, 1.0]}, "box must have shape"),
        ({"mask_input": np.zeros((1, 10, 10))}, "mask_input must have shape"),
        ({"mask_input": np.zeros((2, 1, 32, 32))}, "cannot batch mask inputs alone"),
        (
            {"point_coords": np.zeros((2, 1, 2)), "point_labels": np.ones((2, 1)), "box": np.zeros((3, 4))},
            "disagree",
        ),
        ({"point_coords": [["a", "b"]], "point_labels": [1]}, "numeric"),
    ],
)
def test_bad_prompts_get_clear_errors(predictor, rgb_image, prompt, message):
    model = UncertainSAM(predictor, random_heads())
    model.set_image(rgb_image)
    with pytest.raises(InvalidInputError, match=message):
        model.predict(**prompt)


def test_predict_before_set_image(predictor):
    with pytest.raises(InvalidInputError, match="set_image"):
        UncertainSAM(predictor).predict(point_coords=[[1.0, 1.0]], point_labels=[1])


def test_image_conversions_give_the_rgb_result(predictor, rgb_image):
    model = UncertainSAM(predictor, random_heads())
    gray = rgb_image[:, :, 0]
    model.set_image(np.stack([gray] * 3, axis=2))
    reference = model.predict(point_coords=[[30.0, 40.0]], point_labels=[1])
    for variant in (gray, gray[:, :, None], gray.astype(np.uint16) * 257):
        model.set_image(variant)
        result = model.predict(point_coords=[[30.0, 40.0]], point_labels=[1])
        np.testing.assert_allclose(result.uncertainty["task_gap"], reference.uncertainty["task_gap"], atol=1e-6)
    rgba = np.concatenate([rgb_image, np.full((96, 120, 1), 7, np.uint8)], axis=2)
    model.set_image(rgba)
    assert model.image_size == (96, 120)
    for bad, message in [
        (rgb_image.astype(np.float32), "dtype float32"),
        (rgb_image[:, :, :2], "shape"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            model.set_image(bad)


def test_heads_for_another_token_size_are_rejected(predictor):
    with pytest.raises(HeadsFileError, match="128-d tokens"):
        UncertainSAM(predictor, random_heads(token_dim=128))


def test_heads_path_is_loaded_and_version_mismatch_warns(predictor, tmp_path, small_sam2):
    path = random_heads(sam2_version="sam2").save(tmp_path / "h.safetensors")
    with pytest.warns(UserWarning, match="trained for sam2 but the model is sam2.1-tiny"):
        model = UncertainSAM(predictor, path)
    assert model.heads.names == list(HEAD_NAMES)


def test_two_wrappers_share_the_predictors_image(predictor, rgb_image):
    first, second = UncertainSAM(predictor, random_heads()), UncertainSAM(predictor, random_heads())
    first.set_image(rgb_image)
    result = second.predict(point_coords=[[30.0, 40.0]], point_labels=[1])
    assert second.image_size == (96, 120)
    np.testing.assert_array_equal(result.masks, first.predict(point_coords=[[30.0, 40.0]], point_labels=[1]).masks)
    predictor.reset_predictor()  # the predictor dropped its image: no wrapper may pretend otherwise
    with pytest.raises(InvalidInputError, match="no image is set"):
        first.predict(point_coords=[[30.0, 40.0]], point_labels=[1])


def test_masks_are_boolean(predictor, rgb_image):
    model = UncertainSAM(predictor)
    model.set_image(rgb_image)
    result = model.predict(point_coords=[[30.0, 40.0]], point_labels=[1])
    assert result.masks.dtype == bool
    assert result.masks.shape == (3, 96, 120)
    logits = model.predict(point_coords=[[30.0, 40.0]], point_labels=[1], return_logits=True).masks
    np.testing.assert_array_equal(logits > 0, result.masks)


def test_only_image_predictors_are_wrapped(small_sam2):
    from sam2.build_sam import build_sam2_video_predictor

    video_predictor = build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        None,
        device="cpu",
        hydra_overrides_extra=sam2_adapter.small_model_overrides(128),
    )
    for wrong, name in [(video_predictor, "SAM2VideoPredictor"), (small_sam2, "SAM2Base"), (object(), "object")]:
        with pytest.raises(InvalidInputError, match=f"SAM2ImagePredictor, got a .*{name}"):
            UncertainSAM(wrong)


def test_nan_weights_are_reported_with_the_model(rgb_image):
    model = build_small_sam2(seed=3)
    with torch.no_grad():
        model.sam_mask_decoder.iou_prediction_head.layers[0].weight.fill_(float("nan"))
    wrapper = UncertainSAM(sam2_adapter.make_image_predictor(model), random_heads())
    wrapper.set_image(rgb_image)
    with pytest.raises(CheckpointError, match=r"sam2\.1-tiny \(random weights, seed 3\) produced NaN"):
        wrapper.predict(point_coords=[[30.0, 40.0]], point_labels=[1])


def test_uncertainty_map_at_a_chosen_size(predictor, rgb_image):
    model = UncertainSAM(predictor)
    model.set_image(rgb_image)
    result = model.predict(point_coords=[[30.0, 40.0]], point_labels=[1])
    small = result.uncertainty_map((48, 60))
    assert small.shape == (3, 48, 60)
    assert ((small >= 0) & (small <= 1)).all()
    with pytest.raises(InvalidInputError, match="resolution"):
        result.uncertainty_map((0, 5))
