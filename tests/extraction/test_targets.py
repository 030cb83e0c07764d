import math

import numpy as np
import pytest
import torch

from usam.entropy import entropy_from_probabilities, mask_entropy
from usam.extraction.targets import MonteCarloEntropies, mask_ious, normalized_scores, picked


def test_mask_ious_hand_computed():
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True  # 4 pixels
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2, :2] = True  # identical: 1
    masks[1, :2, :] = True  # 8 pixels, 4 shared: 0.5
    # masks[2] empty: 0
    np.testing.assert_allclose(mask_ious(masks, truth), [1.0, 0.5, 0.0])
    assert mask_ious(np.zeros((1, 2, 2), bool), np.zeros((2, 2), bool))[0] == 1.0


def test_normalized_scores():
    torch.testing.assert_close(normalized_scores(torch.tensor([0.2, 0.6, -0.1])), torch.tensor([0.25, 0.75, 0.0]))
    torch.testing.assert_close(normalized_scores(torch.tensor([0.0, 0.0])), torch.tensor([0.5, 0.5]))


def test_picked():
    maps = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    torch.testing.assert_close(picked(maps, torch.tensor([2, 0])), torch.tensor([[[2.0]], [[3.0]]]))


def _logit(p):
    return math.log(p / (1 - p))


def test_monte_carlo_entropies_hand_built():
    """Two models, two image versions, two prompts, uniform maps with known probabilities."""
    size = (2, 2)

    def logits(*probabilities):  # one prompt's three masks as constant maps
        return torch.stack([torch.full(size, _logit(p)) for p in probabilities])

    accumulator = MonteCarloEntropies(["tiny", "large"], num_images=2, num_prompts=2)
    scores = torch.tensor([[0.1, 0.3, 0.6], [0.5, 0.25, 0.25]])
    ious = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.2, 0.8]])  # best: mask 0, then mask 2; SAM's pick: 2, then 0
    for model in ("tiny", "large"):
        for image_index in (0, 1):
            first, second = (0.9, 0.5, 0.2), (0.7, 0.4, 0.3)
            if model == "large":
                first = (0.8, 0.5, 0.2)
            accumulator.add(model, image_index, torch.stack([logits(*first), logits(*second)]), scores, ious)
    tiny = accumulator.entropies("tiny")

    def entropy_of(p):
        return float(entropy_from_probabilities(torch.full(size, p)))

    assert tiny["h_std"] == pytest.approx(float(mask_entropy(torch.full(size, _logit(0.9)))), abs=1e-6)
    assert tiny["h_std_sam_pick"] == pytest.approx(entropy_of(0.2), abs=1e-5)
    # Prompts (unchanged image): best picks 0.9 and 0.3; SAM's picks 0.2 and 0.7.
    assert tiny["h_prompt"] == pytest.approx(entropy_of((0.9 + 0.3) / 2), abs=1e-5)
    assert tiny["h_prompt_sam_pick"] == pytest.approx(entropy_of((0.2 + 0.7) / 2), abs=1e-5)
    # Both image versions give the same maps here: mean of the center picks.
    assert tiny["h_augmentation"] == pytest.approx(entropy_of(0.9), abs=1e-5)
    # Models: tiny picks 0.9, large 0.8 (center prompt, unchanged image); same for both models' rows.
    assert tiny["h_theta"] == pytest.approx(entropy_of(0.85), abs=1e-5)
    assert accumulator.entropies("large")["h_theta"] == tiny["h_theta"]
    # Task: tiny center masks weighted 0.1, 0.3, 0.6.
    assert tiny["h_task"] == pytest.approx(entropy_of(0.1 * 0.9 + 0.3 * 0.5 + 0.6 * 0.2), abs=1e-5)
    # All: mean over models/images/prompts of the score-weighted mixtures.
    tiny_mix = [0.1 * 0.9 + 0.3 * 0.5 + 0.6 * 0.2, 0.5 * 0.7 + 0.25 * 0.4 + 0.25 * 0.3]
    large_mix = [0.1 * 0.8 + 0.3 * 0.5 + 0.6 * 0.2, tiny_mix[1]]
    assert tiny["h_all"] == pytest.approx(entropy_of(np.mean(tiny_mix + large_mix)), abs=1e-5)
    assert tiny["h_all_sam_pick"] == tiny["h_all"]


def test_without_monte_carlo_only_cheap_entropies():
    accumulator = MonteCarloEntropies(["tiny"], num_images=1, num_prompts=1)
    accumulator.add("tiny", 0, torch.zeros(1, 3, 2, 2), torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([[1.0, 0, 0]]))
    values = accumulator.entropies("tiny", monte_carlo=False)
    assert values["h_std"] == pytest.approx(1.0)
    assert values["h_task"] == pytest.approx(1.0)
    assert values["h_prompt"] is None
    assert values["h_augmentation"] is None
    assert values["h_all"] is None


@pytest.mark.parametrize(("tie_rule", "winner"), [("first", 0), ("last", 2)])
def test_monte_carlo_picks_follow_the_tie_rule(tie_rule, winner):
    """Masks 0 and 2 tie on IoU; the best-mask entropies use the one the tie rule picks."""
    probabilities = (0.9, 0.6, 0.7)
    logits = torch.stack([torch.full((2, 2), _logit(p)) for p in probabilities])[None]  # (1 prompt, 3, 2, 2)
    accumulator = MonteCarloEntropies(["m"], 1, 1, tie_rule=tie_rule)
    accumulator.add("m", 0, logits, torch.tensor([[0.1, 0.9, 0.2]]), torch.tensor([[0.8, 0.5, 0.8]]))
    values = accumulator.entropies("m")
    expected = float(entropy_from_probabilities(torch.full((2, 2), probabilities[winner], dtype=torch.float64)))
    assert values["h_std"] == pytest.approx(float(mask_entropy(logits[0, winner])))
    assert values["h_prompt"] == pytest.approx(expected)
    assert values["h_augmentation"] == pytest.approx(expected)
    # SAM's own pick (highest score, mask 1) does not depend on the tie rule.
    assert values["h_std_sam_pick"] == pytest.approx(float(mask_entropy(logits[0, 1])))
