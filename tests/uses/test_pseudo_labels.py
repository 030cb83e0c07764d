"""Tests for usam.uses.pseudo_labels: filter, prompts file, COCO JSON that pycocotools reads."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from usam import sam2_adapter
from usam.errors import DatasetError, InvalidInputError
from usam.heads import random_heads
from usam.outputs import decode_rle
from usam.predictor import UncertainSAM
from usam.uses import KeepBy, PseudoLabelFilter, choose_masks, write_pseudo_labels

OBJECTS = [
    {"box": [10, 10, 60, 50]},
    {"points": [[80, 60]], "category_id": 2},
    {"points": [[30, 70]], "box": [5, 40, 60, 90]},
]


@pytest.fixture
def tiny(small_sam2):
    heads = random_heads(["iou_tiny", "task_gap", "model_gap"], seed=2, sam2_version="sam2.1")
    return UncertainSAM(sam2_adapter.make_image_predictor(small_sam2), heads)


def write_inputs(tmp_path, rgb_image):
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(rgb_image).save(tmp_path / "images" / name)
    prompts = {"images": [{"file": "a.png", "id": 5, "objects": OBJECTS}, {"file": "b.png", "objects": OBJECTS[:2]}]}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    return tmp_path / "images", tmp_path / "prompts.json"


def predicted(tiny, rgb_image):
    """Per object of OBJECTS: usam's picked mask and its predicted IoU, computed directly."""
    tiny.set_image(rgb_image)
    out = []
    for obj in OBJECTS:
        points = obj.get("points")
        prediction = tiny.predict(
            point_coords=points, point_labels=[1] * len(points) if points else None, box=obj.get("box")
        )
        choice = choose_masks(prediction, tiny)
        out.append((prediction.masks[int(choice.index)], float(choice.predicted_iou)))
    return out


def test_kept_masks_are_a_coco_dataset_pycocotools_reads(tiny, rgb_image, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.mask import decode

    images, prompts = write_inputs(tmp_path, rgb_image)
    expected = predicted(tiny, rgb_image)
    threshold = float(np.median([value for _, value in expected]))
    out = tmp_path / "labels" / "pseudo.json"
    summary = write_pseudo_labels(tiny, images, prompts, out, PseudoLabelFilter(threshold), progress=False)

    kept_a = [(mask, value) for mask, value in expected if value >= threshold]
    kept_b = [(mask, value) for mask, value in expected[:2] if value >= threshold]
    assert summary.objects == 5
    assert summary.kept == len(kept_a) + len(kept_b)
    assert summary.images == 2
    assert not (tmp_path / "labels" / "pseudo.json.partial.json").exists()
    coco = COCO(str(out))
    assert sorted(coco.getImgIds()) == [2, 5]
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[5]))
    assert len(annotations) == len(kept_a)
    for annotation, (mask, value) in zip(annotations, kept_a, strict=True):
        np.testing.assert_array_equal(decode(annotation["segmentation"]).astype(bool), mask)
        np.testing.assert_array_equal(decode_rle(annotation["segmentation"]), mask)
        assert annotation["score"] == pytest.approx(value)
        assert annotation["usam"]["kept_by"] == "predicted-iou"
        assert set(annotation["usam"]["uncertainty"]) == {"iou_tiny", "task_gap", "model_gap"}
    results = coco.loadRes(json.loads(out.read_text())["annotations"])
    assert len(results.getAnnIds()) == summary.kept


def test_a_second_run_resumes_and_a_changed_filter_starts_afresh(tiny, rgb_image, tmp_path):
    images, prompts = write_inputs(tmp_path, rgb_image)
    out = tmp_path / "pseudo.json"
    calls = []

    def loader(path):
        calls.append(path.name)
        return np.asarray(Image.open(path).convert("RGB"))

    partial = out.with_name("pseudo.json.partial.json")
    # A run that stopped after the first image left this partial file behind.
    first = write_pseudo_labels(tiny, images, prompts, out, PseudoLabelFilter(0.0), load_image=loader, progress=False)
    saved = json.loads(out.read_text())
    state = {
        "settings": {"threshold": 0.0, "keep_by": "auto", "prompts": str(prompts)},
        "images": saved["images"][:1],
        "annotations": [{k: v for k, v in a.items() if k != "id"} for a in saved["annotations"] if a["image_id"] == 5],
        "objects": 3,
    }
    partial.write_text(json.dumps(state))
    calls.clear()
    resumed = write_pseudo_labels(tiny, images, prompts, out, PseudoLabelFilter(0.0), load_image=loader, progress=False)
    assert calls == ["b.png"]
    assert resumed.resumed_images == 1
    assert json.loads(out.read_text())["annotations"] == saved["annotations"]
    assert first.kept == 5
    partial.write_text(json.dumps(state))
    calls.clear()
    write_pseudo_labels(tiny, images, prompts, out, PseudoLabelFilter(0.5), load_image=loader, progress=False)
    assert calls == ["a.png", "b.png"]


def test_lower_bound_is_used_when_the_prediction_has_one(tiny, rgb_image, tmp_path):
    images, prompts = write_inputs(tmp_path, rgb_image)

    class Calibrated:
        """A model whose predictions carry a lower bound 0.3 below the predicted IoU, as calibrated heads give."""

        heads, model_name = tiny.heads, tiny.model_name

        def set_image(self, image):
            tiny.set_image(image)

        def predict(self, **prompt):
            prediction = tiny.predict(**prompt)
            return dataclasses.replace(prediction, iou_lower={"iou_tiny": prediction.uncertainty["iou_tiny"] - 0.3})

    out = tmp_path / "lower.json"
    write_pseudo_labels(Calibrated(), images, prompts, out, PseudoLabelFilter(0.0), progress=False)
    for annotation in json.loads(out.read_text())["annotations"]:
        assert annotation["usam"]["kept_by"] == "lower-bound"
        assert annotation["usam"]["iou_lower"] == pytest.approx(annotation["usam"]["predicted_iou"] - 0.3)
    with pytest.raises(InvalidInputError, match="calibrated heads"):
        write_pseudo_labels(tiny, images, prompts, out, PseudoLabelFilter(0.0, KeepBy.LOWER_BOUND), progress=False)


@pytest.mark.parametrize("threshold", [1.5, -0.1, float("nan"), "high"])
def test_bad_thresholds_are_refused(threshold):
    with pytest.raises(InvalidInputError, match="pseudo-label threshold"):
        PseudoLabelFilter(threshold)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"images": [{"file": "a.png"}]}, "objects"),
        ({"images": [{"file": "a.png", "objects": [{}]}]}, "no prompt"),
        ({"images": [{"file": "a.png", "objects": [{"box": [1, 2, 3]}]}]}, "x0, y0, x1, y1"),
        ({"images": [{"file": "../a.png", "objects": [{"box": [1, 2, 3, 4]}]}]}, "not a relative path"),
        ({"pictures": []}, "'images' list"),
    ],
)
def test_malformed_prompt_files_name_the_entry(tiny, tmp_path, content, message):
    (tmp_path / "prompts.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=message):
        write_pseudo_labels(tiny, tmp_path, tmp_path / "prompts.json", tmp_path / "o.json", PseudoLabelFilter(0.5))
