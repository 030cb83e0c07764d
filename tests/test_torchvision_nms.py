"""The ``torchvision::nms`` operator works next to a CPU torch (usam's kernel when the fix applies)."""

import numpy as np
import pytest
import torch

from usam.torchvision_fix import ensure_torchvision, nms_cpu


def reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS written out: visit by decreasing score (ties: lower index first), drop IoU > threshold."""
    order = sorted(range(len(scores)), key=lambda index: (-scores[index], index))
    kept: list[int] = []
    for index in order:
        x1, y1, x2, y2 = boxes[index]
        suppressed = False
        for other in kept:
            a1, b1, a2, b2 = boxes[other]
            width = max(0.0, min(x2, a2) - max(x1, a1))
            height = max(0.0, min(y2, b2) - max(y1, b1))
            intersection = width * height
            union = (x2 - x1) * (y2 - y1) + (a2 - a1) * (b2 - b1) - intersection
            if intersection / union > threshold:
                suppressed = True
                break
        if not suppressed:
            kept.append(index)
    return kept


def random_boxes(generator: np.random.Generator, count: int) -> np.ndarray:
    corners = generator.uniform(0, 50, size=(count, 2))
    sizes = generator.uniform(1, 30, size=(count, 2))
    return np.concatenate([corners, corners + sizes], axis=1)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
def test_nms_matches_the_reference_with_ties(seed, threshold):
    generator = np.random.default_rng(seed)
    boxes = random_boxes(generator, 60)
    boxes[10:15] = boxes[0]  # identical boxes
    scores = generator.choice([0.2, 0.5, 0.9], size=60)  # many equal scores: the tie order matters
    expected = reference_nms(boxes, scores, threshold)
    kept = nms_cpu(torch.tensor(boxes), torch.tensor(scores), threshold)
    assert kept.tolist() == expected


def test_the_torchvision_nms_operator_works_after_import():
    # With a CPU torch next to a CUDA torchvision the operator is usam's kernel; with a matching torchvision it is
    # torchvision's own. Either way it must agree with the reference.
    ensure_torchvision()
    generator = np.random.default_rng(7)
    boxes = torch.tensor(random_boxes(generator, 40), dtype=torch.float32)
    scores = torch.tensor(generator.choice([0.1, 0.4, 0.8], size=40), dtype=torch.float32)
    kept = torch.ops.torchvision.nms(boxes, scores, 0.5)
    assert kept.tolist() == reference_nms(boxes.double().numpy(), scores.double().numpy(), 0.5)


def test_nms_of_no_boxes_is_empty():
    assert nms_cpu(torch.zeros((0, 4)), torch.zeros(0), 0.5).tolist() == []
