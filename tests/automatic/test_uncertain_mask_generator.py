"""``UncertainMaskGenerator``: SAM2's automatic masks, each carrying the estimates of the tokens that produced it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_small_sam2
from usam import UncertainSAM, sam2_adapter
from usam.automatic import PREDICTED_IOU_KEY, RankBy, UncertainMaskGenerator, rank_key, rank_records
from usam.errors import HeadsFileError, InvalidInputError
from usam.head_table import HEAD_NAMES
from usam.heads import HEAD_INPUTS, TOKEN_INPUTS, random_heads
from usam.model_card import ClickMapPrompting, ModelCard, save_model_card

SAM2_KEYS = ("area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box")


@pytest.fixture(scope="module")
def heads():
    return random_heads(HEAD_NAMES, sam2_version="sam2.1", seed=3)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(2)
    picture = (rng.random((96, 120, 3)) * 255).astype(np.uint8)
    picture[20:70, 30:80] = (220, 30, 30)
    return picture


def by_point_and_score(records):
    return sorted(records, key=lambda record: (record["point_coords"], record["predicted_iou"]))


def test_records_equal_sam2s_generator_through_its_filters_and_crop_merging(small_sam2, heads, image):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    # Random weights: SAM's scores lie around 0.5 and the stability scores are 0.
    options = {
        "points_per_side": 2,
        "pred_iou_thresh": 0.5,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 0.9,
        "crop_n_layers": 1,
        "crop_nms_thresh": 0.95,
    }
    reference = SAM2AutomaticMaskGenerator(small_sam2, **options)
    sam2_adapter.fit_feature_sizes(reference.predictor)
    expected = by_point_and_score(reference.generate(image))
    records = by_point_and_score(UncertainMaskGenerator(small_sam2, heads, **options).generate(image))
    assert len(records) == len(expected) > 0
    for record, reference_record in zip(records, expected, strict=True):
        assert {key: record[key] for key in SAM2_KEYS} == {key: reference_record[key] for key in SAM2_KEYS}
        np.testing.assert_array_equal(record["segmentation"], reference_record["segmentation"])


def recomputed(model: UncertainSAM, image: np.ndarray, record: dict):
    """The image predictor's prediction at the record's point, in the record's crop, and the mask it matches."""
    x0, y0, width, height = (int(value) for value in record["crop_box"])
    crop = image[y0 : y0 + height, x0 : x0 + width]
    if model.image_size != crop.shape[:2]:
        model.set_image(crop)
    x, y = record["point_coords"][0]
    result = model.predict(point_coords=[[x - x0, y - y0]], point_labels=[1])
    index = int(np.argmin(np.abs(result.sam_scores - record["predicted_iou"])))
    return result, index


@pytest.mark.parametrize(
    ("box_nms_thresh", "at_least", "inputs"),
    [(0.7, 1, TOKEN_INPUTS), (1.0, 8, TOKEN_INPUTS), (1.0, 8, HEAD_INPUTS)],
    ids=["nms-0.7", "nms-1.0", "nms-1.0-signal-heads"],
)
def test_each_record_carries_the_estimates_of_its_own_mask(small_sam2, image, box_nms_thresh, at_least, inputs):
    # Heads that read signals get each mask's own signal vector, as the image predictor computes it.
    heads = random_heads(HEAD_NAMES, sam2_version="sam2.1", seed=3, inputs=inputs)
    # Random weights give blobs whose boxes all but cover the image: box NMS at 0.7 keeps one, at 1.0 all.
    generator = UncertainMaskGenerator(
        small_sam2,
        heads,
        points_per_side=4,
        pred_iou_thresh=0.5,
        stability_score_thresh=0.0,
        box_nms_thresh=box_nms_thresh,
        rank_by="stability_score",
    )
    records = generator.generate(image)
    assert len(records) >= at_least
    model = UncertainSAM(sam2_adapter.make_image_predictor(small_sam2), heads)
    for record in records[:: max(1, len(records) // 4)]:
        result, index = recomputed(model, image, record)
        assert result.sam_scores[index] == pytest.approx(record["predicted_iou"], abs=1e-4)
        # The three masks of a point are told apart by their scores, so the match is the record's own mask.
        others = np.delete(result.sam_scores, index)
        assert np.abs(others - record["predicted_iou"]).min() > 1e-3
        for name in HEAD_NAMES:
            assert record["uncertainty"][name] == pytest.approx(float(result.uncertainty[name][index]), abs=1e-4)
        assert record["entropy"] == pytest.approx(float(result.entropy[index]), abs=1e-4)
        assert record[PREDICTED_IOU_KEY] == record["uncertainty"]["iou_tiny"]  # the model's own size head


def test_the_generator_leaves_no_hooks_and_other_predictors_unchanged(small_sam2, heads, image):
    predictor = sam2_adapter.make_image_predictor(small_sam2)
    model = UncertainSAM(predictor, heads)
    model.set_image(image)
    before = model.predict(point_coords=[[50, 40]], point_labels=[1])
    UncertainMaskGenerator(small_sam2, heads, points_per_side=2).generate(image)
    assert list(sam2_adapter.iter_hooks(small_sam2)) == []
    after = model.predict(point_coords=[[50, 40]], point_labels=[1])
    np.testing.assert_array_equal(after.masks, before.masks)
    np.testing.assert_array_equal(after.sam_scores, before.sam_scores)
    for name in HEAD_NAMES:
        np.testing.assert_array_equal(after.uncertainty[name], before.uncertainty[name])


def test_min_predicted_iou_keeps_exactly_the_masks_at_or_above_it(small_sam2, heads, image):
    # Without NMS (threshold 1) the filter's effect is exactly a selection of the unfiltered records.
    options = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    everything = UncertainMaskGenerator(small_sam2, heads, **options).generate(image)
    predicted = sorted(record[PREDICTED_IOU_KEY] for record in everything)
    threshold = predicted[len(predicted) // 2]
    kept = UncertainMaskGenerator(
        small_sam2, heads, min_predicted_iou=threshold, rank_by="predicted_iou", **options
    ).generate(image)
    expected = [record for record in everything if record[PREDICTED_IOU_KEY] >= threshold]
    assert 0 < len(kept) < len(everything)

    def described(records):
        return [
            ({key: record[key] for key in SAM2_KEYS}, record["uncertainty"]) for record in by_point_and_score(records)
        ]

    assert described(kept) == described(expected)
    values = [record[PREDICTED_IOU_KEY] for record in kept]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("rank_by", list(RankBy))
def test_rank_records_orders_by_the_chosen_score(rank_by):
    rng = np.random.default_rng(4)
    records = [
        {"predicted_iou": float(a), "stability_score": float(b), PREDICTED_IOU_KEY: float(c)}
        for a, b, c in rng.random((20, 3))
    ]
    ranked = rank_records(records, rank_by)
    values = [record[rank_key(rank_by)] for record in ranked]
    assert values == sorted(values, reverse=True)
    assert sorted(map(id, ranked)) == sorted(map(id, records))
    other = next(key for key in ("predicted_iou", "stability_score") if key != rank_key(rank_by))
    assert [record[other] for record in ranked] != sorted((record[other] for record in records), reverse=True)


def test_refusals(small_sam2, heads):
    with pytest.raises(HeadsFileError, match="calibrat"):
        UncertainMaskGenerator(small_sam2, heads, min_iou_lower=0.5)
    with pytest.raises(InvalidInputError, match="needs heads"):
        UncertainMaskGenerator(small_sam2, rank_by="predicted_iou")
    with pytest.raises(InvalidInputError, match="not an IoU head"):
        UncertainMaskGenerator(small_sam2, heads, iou_head="task_gap")
    with pytest.raises(InvalidInputError, match="IoU head"):
        UncertainMaskGenerator(small_sam2, random_heads(["task_gap"]), min_predicted_iou=0.5)
    with pytest.raises(InvalidInputError, match="use_m2m"):
        UncertainMaskGenerator(small_sam2, heads, use_m2m=True)
    with pytest.raises(InvalidInputError, match="rank_by"):
        UncertainMaskGenerator(small_sam2, heads, rank_by="area")
    with pytest.raises(InvalidInputError, match="min_predicted_iou"):
        UncertainMaskGenerator(small_sam2, heads, min_predicted_iou=1.5)


def test_no_surviving_mask_gives_no_records_also_with_crops(small_sam2, heads, image):
    # SAM2 1.1.0's own generator fails here (crop NMS over no boxes).
    generator = UncertainMaskGenerator(small_sam2, heads, points_per_side=1, pred_iou_thresh=0.99, crop_n_layers=1)
    assert generator.generate(image) == []


def test_without_heads_records_have_entropy_and_no_estimates(small_sam2, image):
    records = UncertainMaskGenerator(
        small_sam2, points_per_side=1, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    ).generate(image)
    assert records
    assert all(record["uncertainty"] == {} and record[PREDICTED_IOU_KEY] is None for record in records)
    assert all(0.0 <= record["entropy"] <= 1.0 for record in records)


def test_a_click_map_model_gets_each_points_click_map(tmp_path, heads, image):
    torch.save({"model": build_small_sam2(seed=5).state_dict()}, tmp_path / "clicky-tiny.pt")
    card = save_model_card(
        ModelCard(
            name="clicky-tiny",
            config="configs/sam2.1/sam2.1_hiera_t.yaml",
            checkpoint=tmp_path / "clicky-tiny.pt",
            size="tiny",
            hydra_overrides=tuple(sam2_adapter.small_model_overrides(128)),
            prompting=ClickMapPrompting(sigma_px=4.0, amplitude=5.0, map_size=32),
        ),
        tmp_path / "clicky.json",
    )
    generator = UncertainMaskGenerator.from_pretrained(
        card, heads, points_per_side=1, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    records = generator.generate(image)
    model = UncertainSAM.from_pretrained(card, heads)  # prompts with the click map, as training did
    assert records
    for record in records:
        result, index = recomputed(model, image, record)
        assert result.sam_scores[index] == pytest.approx(record["predicted_iou"], abs=1e-4)
        assert record["uncertainty"]["model_gap"] == pytest.approx(
            float(result.uncertainty["model_gap"][index]), abs=1e-4
        )


def test_min_iou_lower_keeps_exactly_the_masks_whose_conformal_bound_passes(small_sam2, image):
    from usam.calibration import HeadCalibration, HeadsCalibration

    heads = random_heads(HEAD_NAMES, sam2_version="sam2.1", seed=3)
    options = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    everything = UncertainMaskGenerator(small_sam2, heads, **options).generate(image)
    generator_head = UncertainMaskGenerator(small_sam2, heads, **options).iou_head
    predicted = np.array([record[PREDICTED_IOU_KEY] for record in everything])
    rng = np.random.default_rng(0)
    # A calibration spread over the records' predictions, so that some bounds pass and some do not.
    fit = rng.uniform(predicted.min() - 0.05, predicted.max() + 0.05, 800)
    truth = np.clip((fit - fit.min()) / np.ptp(fit) + rng.normal(0, 0.05, fit.size), 0, 1)
    head = HeadCalibration.fit(fit[:400], truth[:400], fit[400:], truth[400:], min_bin_rows=80)
    heads.metadata.calibration = HeadsCalibration({generator_head: head}).to_json()
    bounds = head.lower_bound(predicted, 0.2, "marginal")
    threshold = float(np.sort(bounds)[len(bounds) // 2])
    kept = UncertainMaskGenerator(
        small_sam2, heads, min_iou_lower=threshold, alpha=0.2, bound="marginal", **options
    ).generate(image)
    expected = [record for record, lower in zip(everything, bounds, strict=True) if lower >= threshold - 1e-6]
    assert 0 < len(kept) < len(everything)
    assert sorted(r["point_coords"] + [r["predicted_iou"]] for r in kept) == sorted(
        r["point_coords"] + [r["predicted_iou"]] for r in expected
    )
