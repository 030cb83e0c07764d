"""The transformers backend gives the SAM2 backend's tokens, masks and estimates for the same weights and prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_small_sam2
from usam import UncertainSAM, sam2_adapter
from usam.errors import UsamError
from usam.head_table import HEAD_NAMES
from usam.heads import random_heads
from usam.transformers_adapter import (
    TransformersImagePredictor,
    TransformersTokenCapture,
    import_transformers,
    sam2_to_transformers,
)

try:
    import_transformers()
except UsamError:
    pytest.skip("transformers is not installed (pip install 'usam[transformers]')", allow_module_level=True)

PROMPTS = {
    "point": {"point_coords": [[30.0, 40.0]], "point_labels": [1]},
    "points": {"point_coords": [[30.0, 40.0], [80.0, 20.0]], "point_labels": [1, 0]},
    "box": {"box": [10.0, 10.0, 70.0, 60.0]},
    "box and point": {"box": [10.0, 10.0, 70.0, 60.0], "point_coords": [[30.0, 40.0]], "point_labels": [1]},
    "batched points": {
        "point_coords": [[[30.0, 40.0]], [[90.0, 50.0]], [[5.0, 80.0]]],
        "point_labels": [[1], [1], [1]],
    },
    "batched boxes": {"box": [[10.0, 10.0, 70.0, 60.0], [50.0, 20.0, 110.0, 90.0]]},
}


def _backends(sam_model, heads):
    """The same SAM2 weights behind both backends, each wrapped with the same heads."""
    meta = UncertainSAM(sam2_adapter.make_image_predictor(sam_model), heads)
    converted = TransformersImagePredictor(sam2_to_transformers(sam_model))
    return meta, UncertainSAM(converted, heads)


@pytest.fixture(scope="module")
def backends():
    return _backends(build_small_sam2(seed=5), random_heads(seed=2))


def assert_same_prediction(expected, actual):
    np.testing.assert_array_equal(actual.masks, expected.masks)
    assert actual.masks.dtype == expected.masks.dtype == bool
    np.testing.assert_allclose(actual.sam_scores, expected.sam_scores, atol=1e-5)
    np.testing.assert_allclose(actual.low_res_logits, expected.low_res_logits, atol=1e-4)
    np.testing.assert_allclose(actual.iou_token, expected.iou_token, atol=1e-4)
    np.testing.assert_allclose(actual.mask_tokens, expected.mask_tokens, atol=1e-4)
    np.testing.assert_array_equal(actual.mask_token_index, expected.mask_token_index)
    np.testing.assert_array_equal(actual.head_token_index, expected.head_token_index)
    assert set(actual.uncertainty) == set(expected.uncertainty) == set(HEAD_NAMES)
    for name in HEAD_NAMES:
        np.testing.assert_allclose(actual.uncertainty[name], expected.uncertainty[name], atol=1e-5)
    np.testing.assert_allclose(actual.entropy, expected.entropy, atol=1e-4)
    assert actual.image_size == expected.image_size


@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_both_backends_agree(backends, rgb_image, prompt, multimask_output):
    meta, transformers_model = backends
    meta.set_image(rgb_image)
    transformers_model.set_image(rgb_image)
    expected = meta.predict(**PROMPTS[prompt], multimask_output=multimask_output)
    actual = transformers_model.predict(**PROMPTS[prompt], multimask_output=multimask_output)
    assert actual.sam_scores.shape == expected.sam_scores.shape
    assert actual.iou_token.shape[-1] == 256
    assert_same_prediction(expected, actual)


@pytest.mark.parametrize("threshold", [0.0, 1.01])
def test_single_mask_token_agrees_with_and_without_the_fallback(rgb_image, threshold):
    sam_model = build_small_sam2(seed=3)
    # 0: token 0's mask is always stable; above 1: the decoder always falls back to the best of tokens 1..3.
    sam_model.sam_mask_decoder.dynamic_multimask_stability_thresh = threshold
    meta, transformers_model = _backends(sam_model, random_heads(seed=1))
    meta.set_image(rgb_image)
    transformers_model.set_image(rgb_image)
    prompt = PROMPTS["batched points"]
    expected = meta.predict(**prompt, multimask_output=False)
    actual = transformers_model.predict(**prompt, multimask_output=False)
    tokens = actual.mask_token_index[:, 0]
    assert (tokens == 0).all() if threshold == 0.0 else (tokens >= 1).all()
    assert_same_prediction(expected, actual)


def test_mask_input_prompts_agree(backends, rgb_image):
    meta, transformers_model = backends
    meta.set_image(rgb_image)
    transformers_model.set_image(rgb_image)
    first = meta.predict(**PROMPTS["batched points"])
    best = first.low_res_logits[np.arange(3), first.sam_scores.argmax(axis=1)][:, None]  # (3, 1, 32, 32)
    prompt = {**PROMPTS["batched points"], "mask_input": best}
    assert_same_prediction(meta.predict(**prompt), transformers_model.predict(**prompt))
    single = {**PROMPTS["point"], "mask_input": best[0]}
    assert_same_prediction(meta.predict(**single), transformers_model.predict(**single))


def test_captured_tokens_are_the_decoder_tokens(backends, rgb_image):
    _, transformers_model = backends
    predictor = transformers_model.predictor
    predictor.set_image(rgb_image)
    decoder = predictor.model.mask_decoder
    seen = {}
    handle = decoder.iou_prediction_head.register_forward_hook(lambda module, args, output: seen.update(iou=output))
    try:
        with TransformersTokenCapture(predictor) as capture:
            predictor.predict(**PROMPTS["batched boxes"])
    finally:
        handle.remove()
    call = capture.single_call()
    assert call.iou_token.shape == (2, 256)
    assert call.mask_tokens.shape == (2, 4, 256)
    assert capture.point_batch_sizes == [2]
    # The captured (batch * point_batch) rows are what the IoU head reads: it reproduces the decoder's IoU output.
    with torch.no_grad():
        recomputed = decoder.iou_prediction_head(call.iou_token)
    torch.testing.assert_close(recomputed, seen["iou"].reshape(2, 4))


def _hooks(module):
    return [(name, len(sub._forward_hooks) + len(sub._forward_pre_hooks)) for name, sub in module.named_modules()]


def test_hooks_are_removed_after_a_call_and_after_an_error(backends, rgb_image):
    _, transformers_model = backends
    model = transformers_model.predictor.model
    before = _hooks(model)
    assert all(count == 0 for _, count in before)
    transformers_model.set_image(rgb_image)
    transformers_model.predict(**PROMPTS["point"])
    assert _hooks(model) == before

    def fail(module, args, kwargs):
        raise RuntimeError("boom inside the transformer")

    failing = model.mask_decoder.transformer.register_forward_pre_hook(fail, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            transformers_model.predict(**PROMPTS["point"])
        leftover = [(name, count) for name, count in _hooks(model) if count]
        assert leftover == [("mask_decoder.transformer", 1)]
    finally:
        failing.remove()
    assert _hooks(model) == before


def test_saved_model_loads_by_folder_and_predicts_the_same(backends, rgb_image, tmp_path):
    meta, transformers_model = backends
    predictor = transformers_model.predictor
    predictor.model.save_pretrained(tmp_path)
    predictor.processor.save_pretrained(tmp_path)
    loaded = UncertainSAM(TransformersImagePredictor.from_pretrained(tmp_path), transformers_model.heads)
    meta.set_image(rgb_image)
    loaded.set_image(rgb_image)
    assert_same_prediction(meta.predict(**PROMPTS["box"]), loaded.predict(**PROMPTS["box"]))
    assert loaded.predictor.name == str(tmp_path)
