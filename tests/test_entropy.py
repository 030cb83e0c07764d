import numpy as np
import pytest
import torch

from usam.entropy import entropy_from_probabilities, mask_entropy, pixel_entropy


def _reference(logits: np.ndarray) -> float:
    p = np.clip(1 / (1 + np.exp(-logits.astype(np.float64))), 1e-6, 1 - 1e-6)
    h = -p * np.log2(p) - (1 - p) * np.log2(1 - p)
    return float((p * h).sum() / p.sum())


def test_uncertain_pixels_have_one_bit():
    assert mask_entropy(torch.zeros(4, 4)).item() == pytest.approx(1.0)
    assert pixel_entropy(torch.zeros(2, 2)).numpy() == pytest.approx(np.ones((2, 2)))


def test_confident_mask_has_tiny_entropy():
    logits = torch.full((8, 8), -40.0)
    logits[2:6, 2:6] = 40.0
    # Clipping at 1e-6: h = -(1e-6 log2 1e-6 + (1-1e-6) log2(1-1e-6)) ~ 2.14e-5 bits per pixel.
    assert mask_entropy(logits).item() == pytest.approx(2.137e-5, rel=1e-3)


def test_hand_computed_two_pixels():
    # p = (0.5, 0.8): h = (1, 0.7219); H = (0.5*1 + 0.8*0.7219) / 1.3 = 0.82886
    logits = torch.tensor([[0.0, float(np.log(4.0))]])
    assert mask_entropy(logits).item() == pytest.approx(0.82886, abs=1e-4)


def test_matches_reference_on_random_batches():
    logits = np.random.default_rng(0).normal(scale=6, size=(2, 3, 16, 16)).astype(np.float32)
    values = mask_entropy(torch.from_numpy(logits)).numpy()
    assert values.shape == (2, 3)
    for index in np.ndindex(2, 3):
        assert values[index] == pytest.approx(_reference(logits[index]), rel=1e-5)


def test_mean_probability_map_entropy():
    first = torch.zeros(4, 4)
    second = torch.ones(4, 4)
    # The mean of a certain background and a certain foreground map is p = 0.5 everywhere: one bit.
    assert entropy_from_probabilities((first + second) / 2).item() == pytest.approx(1.0)
