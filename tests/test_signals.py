"""SAM2's scalar signals: equal to what SAM2 itself returns and computes for the same decoder call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sam2.utils.amg import calculate_stability_score

from usam import sam2_adapter
from usam.entropy import mask_entropy
from usam.predictor import UncertainSAM
from usam.signals import (
    SIGNAL_DIM,
    SIGNAL_FIELDS,
    SIGNAL_NAMES,
    PromptSignals,
    area_fractions,
    prompt_signals,
    signal_features,
    stability_scores,
)
from usam.store import SIGNAL_COLUMNS

POINTS = np.array([[[30.0, 40.0]], [[80.0, 20.0]], [[60.0, 70.0]]], dtype=np.float32)


class DecoderOutputs:
    """SAM2's own decoder outputs, recorded by a plain forward hook of the test (independent of usam's capture)."""

    def __init__(self, predictor):
        self.decoder = predictor.model.sam_mask_decoder
        self.outputs = []

    def __enter__(self):
        self.handle = self.decoder.register_forward_hook(lambda module, args, output: self.outputs.append(output))
        return self

    def __exit__(self, *exc_info):
        self.handle.remove()


@pytest.fixture
def wrapped(predictor, rgb_image):
    model = UncertainSAM(predictor)
    model.set_image(rgb_image)
    return model


@pytest.mark.parametrize("multimask_output", [True, False])
def test_signals_equal_what_sam2_returns_for_the_same_call(wrapped, multimask_output):
    labels = np.ones(POINTS.shape[:2], dtype=np.int32)
    with DecoderOutputs(wrapped.predictor) as recorded:
        result = wrapped.predict(
            point_coords=POINTS, point_labels=labels, multimask_output=multimask_output, signals=True
        )
    # SAM2's own predict of the same prompts, without usam's hooks.
    _, sam_scores, low_res_logits = wrapped.predictor.predict(
        point_coords=POINTS, point_labels=labels, multimask_output=multimask_output
    )
    signals = result.signals
    assert set(signals) == set(SIGNAL_FIELDS) == set(SIGNAL_COLUMNS)
    assert signals["token_sam_scores"].shape == (3, 4)
    assert signals["object_score_logit"].shape == (3,)
    producing = result.mask_token_index
    scores_of_returned = np.take_along_axis(signals["token_sam_scores"], producing, axis=1)
    np.testing.assert_array_equal(scores_of_returned, sam_scores)
    # The object-score logit that SAM2's decoder returned in that very call.
    (decoder_output,) = recorded.outputs
    np.testing.assert_array_equal(signals["object_score_logit"], decoder_output[3].reshape(-1).numpy())
    # Entropy, area and stability of the returned masks equal those of SAM2's returned logits.
    logits = torch.from_numpy(low_res_logits)
    for name, expected in (
        ("token_entropies", mask_entropy(logits)),
        ("token_area_fractions", (logits > 0).float().mean(dim=(-2, -1))),
        ("token_stabilities", calculate_stability_score(logits, 0.0, 1.0)),
    ):
        np.testing.assert_allclose(np.take_along_axis(signals[name], producing, axis=1), expected.numpy(), atol=1e-6)
    if multimask_output:
        np.testing.assert_array_equal(result.entropy, np.take_along_axis(signals["token_entropies"], producing, 1))


def test_single_mask_score_is_token_zero_when_sam2_keeps_it(wrapped):
    # Without SAM2's dynamic fallback the single-mask output is always token 0: its score is token 0's.
    labels = np.ones(POINTS.shape[:2], dtype=np.int32)
    multimask = wrapped.predict(point_coords=POINTS, point_labels=labels, multimask_output=True, signals=True)
    decoder = wrapped.predictor.model.sam_mask_decoder
    decoder.dynamic_multimask_via_stability = False
    try:
        _, single_scores, single_logits = wrapped.predictor.predict(
            point_coords=POINTS, point_labels=labels, multimask_output=False
        )
    finally:
        decoder.dynamic_multimask_via_stability = True
    np.testing.assert_array_equal(multimask.signals["token_sam_scores"][:, 0], single_scores[:, 0])
    stability = calculate_stability_score(torch.from_numpy(single_logits[:, 0]), 0.0, 1.0).numpy()
    np.testing.assert_allclose(multimask.signals["token_stabilities"][:, 0], stability, atol=1e-7)
    # The multimask call's other three tokens are the masks SAM2 returned.
    np.testing.assert_array_equal(multimask.signals["token_sam_scores"][:, 1:], multimask.sam_scores)


def test_one_prompt_loses_its_batch_axis_and_signals_leave_no_hooks(wrapped):
    result = wrapped.predict(point_coords=POINTS[0], point_labels=np.ones(1), signals=True)
    assert result.signals["token_sam_scores"].shape == (4,)
    assert result.signals["object_score_logit"].shape == ()
    assert list(sam2_adapter.iter_hooks(wrapped.predictor.model)) == []
    assert wrapped.predict(point_coords=POINTS[0], point_labels=np.ones(1)).signals is None


def test_stability_matches_sam2_and_is_one_for_empty_masks():
    logits = torch.randn(5, 16, 16) * 3
    logits[0] = -5.0  # no pixel above -1: SAM2's function divides 0 by 0
    ours = stability_scores(logits)
    theirs = calculate_stability_score(logits, 0.0, 1.0)
    assert torch.isnan(theirs[0])
    assert ours[0] == 1.0
    torch.testing.assert_close(ours[1:], theirs[1:], rtol=0, atol=0)
    half = torch.zeros(1, 4, 4)
    half[0, :2] = 3.0
    assert area_fractions(half).item() == 0.5


def test_signal_vector_reads_the_heads_token_and_the_context():
    generator = torch.Generator().manual_seed(0)
    signals = prompt_signals(
        torch.rand(2, 4, generator=generator), torch.randn(2, 1, generator=generator), torch.randn(2, 4, 8, 8)
    )
    token_index = torch.tensor([[1, 2, 3], [3, 1, 0]])
    vectors = signal_features(signals, token_index).reshape(2, 3, SIGNAL_DIM)
    assert len(SIGNAL_NAMES) == SIGNAL_DIM
    column = {name: index for index, name in enumerate(SIGNAL_NAMES)}
    for prompt in range(2):
        for mask in range(3):
            token = int(token_index[prompt, mask])
            vector = vectors[prompt, mask]
            assert vector[column["own_sam_score"]] == signals.token_sam_scores[prompt, token]
            assert vector[column["own_stability"]] == signals.token_stabilities[prompt, token]
            assert vector[column[f"own_is_token_{token}"]] == 1.0
            assert vector[[column[f"own_is_token_{other}"] for other in range(4)]].sum() == 1.0
            assert vector[column["token_2_entropy"]] == signals.token_entropies[prompt, 2]
            assert vector[column["object_score_logit"]] == signals.object_score_logit[prompt]
    # A store row's arrays give back the same signals.
    again = PromptSignals.from_arrays(signals.as_arrays())
    torch.testing.assert_close(signal_features(again, token_index), signal_features(signals, token_index))
