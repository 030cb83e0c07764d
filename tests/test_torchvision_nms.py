"""The ``torchvision::nms`` operator works next to a CPU torch (usam's kernel when the fix applies)."""

import numpy as np
import pytest
import torch

from usam.torchvision_fix import ensure_torchvision, let_box_ops_use_the_nms_kernel, nms_cpu


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


def reference_batched_nms(boxes: np.ndarray, scores: np.ndarray, categories: np.ndarray, threshold: float) -> list[int]:
    """NMS within each category, the kept boxes of all categories by decreasing score (ties: lower index first)."""
    kept = []
    for category in np.unique(categories):
        members = np.flatnonzero(categories == category)
        kept += [int(members[index]) for index in reference_nms(boxes[members], scores[members], threshold)]
    return sorted(kept, key=lambda index: (-scores[index], index))


@pytest.mark.parametrize("seed", range(3))
def test_torchvision_ops_batched_nms_matches_the_reference(seed):
    ensure_torchvision()
    import torchvision

    generator = np.random.default_rng(seed)
    boxes = random_boxes(generator, 50)
    boxes[20:23] = boxes[3]
    scores = generator.choice([0.3, 0.6, 0.9], size=50)
    categories = generator.integers(0, 3, size=50)
    kept = torchvision.ops.batched_nms(
        torch.tensor(boxes, dtype=torch.float64), torch.tensor(scores), torch.tensor(categories), 0.5
    )
    assert kept.tolist() == reference_batched_nms(boxes, scores, categories, 0.5)
    plain = torchvision.ops.nms(torch.tensor(boxes), torch.tensor(scores), 0.5)
    assert plain.tolist() == reference_nms(boxes, scores, 0.5)


def test_the_extension_check_is_left_alone_when_torchvision_loaded_its_extension(monkeypatch):
    ensure_torchvision()
    import torchvision.extension
    import torchvision.ops.boxes

    monkeypatch.setattr(torchvision.extension, "_has_ops", lambda: True)
    sentinel = object()
    monkeypatch.setattr(torchvision.ops.boxes, "_assert_has_ops", sentinel)
    assert let_box_ops_use_the_nms_kernel() is False
    assert torchvision.ops.boxes._assert_has_ops is sentinel


def test_sam2_automatic_mask_generator_runs_on_a_small_model(small_sam2, rgb_image):
    ensure_torchvision()
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(
        small_sam2, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    size = small_sam2.image_size
    # SAM2's predictor assumes 1024-pixel feature sizes; the small test model has its own.
    generator.predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
    records = generator.generate(rgb_image)
    assert records, "with no thresholds some of the 16 points' masks survive box NMS"
    for record in records:
        assert record["segmentation"].shape == rgb_image.shape[:2]
