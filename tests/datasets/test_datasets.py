"""Tests of the dataset readers, each on a tiny dataset written in the real on-disk layout."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from usam.datasets import (
    DATASETS,
    Ade20kReader,
    CocoReader,
    DatasetFileError,
    DatasetReader,
    DavisReader,
    FolderReader,
    MoseReader,
    Sample,
    SavReader,
    open_dataset,
)
from usam.datasets.base import path_inside
from usam.errors import DatasetError, InvalidInputError, UsamError

# pycocotools 2.0.x trips numpy 2's __array__ copy deprecation inside its Cython decoder; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

cv2 = pytest.importorskip("cv2")
mask_api = pytest.importorskip("pycocotools.mask")

HEIGHT, WIDTH = 20, 30

# ----------------------------------------------------------------------------------------------- helpers


def flat_image(colour: tuple[int, int, int], height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = colour
    return image


def write_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def write_palette_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[1], palette[2], palette[255] = (128, 0, 0), (0, 128, 0), (224, 224, 192)
    picture.putpalette(palette.flatten().tolist())
    picture.save(path)


def write_gray_png(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def box(top: int, left: int, bottom: int, right: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    return mask


def truncate(path: Path) -> None:
    """Cut a file in half, as an interrupted download would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def assert_colour(image: np.ndarray, colour: tuple[int, int, int], tolerance: int = 6) -> None:
    assert image.dtype == np.uint8
    assert image.ndim == 3
    assert image.shape[2] == 3
    difference = np.abs(image.astype(int) - np.array(colour)).max()
    assert difference <= tolerance, f"image differs from {colour} by {difference}"


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's column-major run lengths, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


# -------------------------------------------------------------------------------------------------- COCO

COCO_POLYGON_BOX = box(3, 2, 9, 8)  # what pycocotools rasterises [2,3, 8,3, 8,9, 2,9] to
COCO_RLE_MASK = box(10, 12, 15, 20)
COCO_UNCOMPRESSED_MASK = box(0, 25, 4, 30)


def make_coco(root: Path, split: str = "val") -> dict:
    colours = {1: (200, 30, 30), 2: (30, 200, 30), 3: (30, 30, 200), 4: (200, 200, 30)}
    images = [
        {"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": HEIGHT, "width": WIDTH} for image_id in colours
    ]
    annotations = [
        # image 1: polygon, compressed RLE, uncompressed RLE, crowd and a 9-pixel object
        {"id": 101, "image_id": 1, "iscrowd": 0, "segmentation": [[2, 3, 8, 3, 8, 9, 2, 9]]},
        {"id": 102, "image_id": 1, "iscrowd": 0, "segmentation": compressed_rle(COCO_RLE_MASK)},
        {"id": 103, "image_id": 1, "iscrowd": 1, "segmentation": uncompressed_rle(box(0, 0, 20, 30))},
        {"id": 104, "image_id": 1, "iscrowd": 0, "segmentation": compressed_rle(box(16, 0, 19, 3))},
        {"id": 105, "image_id": 1, "iscrowd": 0, "segmentation": uncompressed_rle(COCO_UNCOMPRESSED_MASK)},
        # image 2: only a crowd and a tiny object -> no objects, left out of keys
        {"id": 201, "image_id": 2, "iscrowd": 1, "segmentation": uncompressed_rle(box(0, 0, 5, 5))},
        {"id": 202, "image_id": 2, "iscrowd": 0, "segmentation": compressed_rle(box(0, 0, 1, 9))},
        # images 3 and 4: one object each
        {"id": 301, "image_id": 3, "iscrowd": 0, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
        {"id": 401, "image_id": 4, "iscrowd": 0, "segmentation": compressed_rle(box(5, 5, 10, 10))},
    ]
    annotation_file = root / "annotations" / f"instances_{split}2017.json"
    annotation_file.parent.mkdir(parents=True)
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    for image_id, colour in colours.items():
        write_jpeg(root / f"{split}2017" / f"{image_id:012d}.jpg", flat_image(colour))
    return colours


def test_coco_keys_skip_images_without_valid_objects(tmp_path: Path) -> None:
    make_coco(tmp_path)
    reader = CocoReader(tmp_path, "val")
    assert reader.keys() == ["000000000001", "000000000003", "000000000004"]
    assert len(reader) == 3


def test_coco_masks_are_exact_and_filtered(tmp_path: Path) -> None:
    colours = make_coco(tmp_path)
    sample = CocoReader(tmp_path, "val2017").load("000000000001")
    assert sample.dataset == "coco"
    assert sample.split == "val"
    assert sample.image_key == "000000000001"
    assert_colour(sample.image, colours[1])
    # crowd (103) and the 9-pixel object (104) are left out
    assert list(sample.masks) == ["101", "102", "105"]
    for mask in sample.masks.values():
        assert mask.dtype == bool
        assert mask.shape == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(sample.masks["101"], COCO_POLYGON_BOX)
    np.testing.assert_array_equal(sample.masks["102"], COCO_RLE_MASK)
    np.testing.assert_array_equal(sample.masks["105"], COCO_UNCOMPRESSED_MASK)


def test_coco_missing_image_is_skipped_and_recorded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_coco(tmp_path)
    missing = tmp_path / "val2017" / "000000000003.jpg"
    missing.unlink()
    reader = CocoReader(tmp_path, "val")
    with caplog.at_level(logging.WARNING):
        samples = list(reader)
    assert [sample.image_key for sample in samples] == ["000000000001", "000000000004"]
    assert len(reader.skipped) == 1
    assert reader.skipped[0].image_key == "000000000003"
    assert reader.skipped[0].path == str(missing)
    assert "does not exist" in reader.skipped[0].reason
    assert str(missing) in caplog.text


def test_coco_missing_annotation_file_names_the_path(tmp_path: Path) -> None:
    make_coco(tmp_path)
    with pytest.raises(DatasetError, match=r"instances_train2017\.json") as raised:
        CocoReader(tmp_path, "train")
    assert str(tmp_path / "annotations" / "instances_train2017.json") in str(raised.value)


def test_coco_malformed_annotation_file(tmp_path: Path) -> None:
    annotation_file = tmp_path / "annotations" / "instances_val2017.json"
    annotation_file.parent.mkdir(parents=True)
    annotation_file.write_text("{not json")
    with pytest.raises(DatasetFileError, match="not valid JSON") as raised:
        CocoReader(tmp_path, "val").keys()
    assert raised.value.path == str(annotation_file)


def test_coco_keys_are_lazy_with_a_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_coco(tmp_path)
    checked: list[int] = []
    original = CocoReader._has_objects

    def counting(self: CocoReader, record: dict) -> bool:
        checked.append(record["id"])
        return original(self, record)

    monkeypatch.setattr(CocoReader, "_has_objects", counting)
    assert CocoReader(tmp_path, "val", limit=1).keys() == ["000000000001"]
    assert checked == [1]


def test_coco_unknown_key(tmp_path: Path) -> None:
    make_coco(tmp_path)
    with pytest.raises(DatasetError, match="not in"):
        CocoReader(tmp_path, "val").load("nope")


# A segmentation pycocotools rejects or would decode into garbage, added to image 3 (which also has a valid object).
MALFORMED_SEGMENTATIONS = {
    "uncompressed counts short of h*w": {"size": [HEIGHT, WIDTH], "counts": [1, 2]},
    "uncompressed counts past h*w": {"size": [HEIGHT, WIDTH], "counts": [HEIGHT * WIDTH, 5]},
    "negative uncompressed count": {"size": [HEIGHT, WIDTH], "counts": [-4, HEIGHT * WIDTH + 4]},
    "garbage compressed counts": {"size": [HEIGHT, WIDTH], "counts": "abc"},
    "compressed counts of another size": compressed_rle(box(0, 0, 2, 2, height=10, width=10)),
    "RLE without size": {"counts": "abc"},
    "RLE size of floats": {**compressed_rle(COCO_RLE_MASK), "size": [float(HEIGHT), float(WIDTH)]},
    "polygon of strings": [["a", "b", "c", "d", "e", "f"]],
    "segmentation is a number": 5,
    "segmentation is missing": None,
}


@pytest.mark.parametrize("segmentation", MALFORMED_SEGMENTATIONS.values(), ids=MALFORMED_SEGMENTATIONS)
def test_coco_malformed_annotation_skips_its_image_and_names_the_annotation(
    tmp_path: Path, segmentation: object
) -> None:
    make_coco(tmp_path)
    annotation_file = tmp_path / "annotations" / "instances_val2017.json"
    content = json.loads(annotation_file.read_text())
    bad = {"id": 302, "image_id": 3, "iscrowd": 0}
    if segmentation is not None:
        bad["segmentation"] = segmentation
    content["annotations"].append(bad)
    annotation_file.write_text(json.dumps(content))
    reader = CocoReader(tmp_path, "val")
    # listed, so that extraction counts it as skipped instead of losing it without a word
    assert reader.keys() == ["000000000001", "000000000003", "000000000004"]
    assert [sample.image_key for sample in reader] == ["000000000001", "000000000004"]
    assert len(reader.skipped) == 1
    skipped = reader.skipped[0]
    assert skipped.image_key == "000000000003"
    assert skipped.path == str(annotation_file)
    assert "annotation 302" in skipped.reason
    assert str(annotation_file) in skipped.reason
    with pytest.raises(DatasetFileError, match="annotation 302"):
        reader.load("000000000003")


def test_coco_valid_compressed_and_uncompressed_rle_of_every_shape_still_decode(tmp_path: Path) -> None:
    """The run-length checks accept what pycocotools itself writes, including long and empty runs."""
    rng = np.random.default_rng(3)
    noisy = rng.random((HEIGHT, WIDTH)) > 0.5
    for mask in (noisy, np.ones((HEIGHT, WIDTH), bool), box(19, 29, 20, 30)):
        assert CocoReader._rle_problem(compressed_rle(mask), HEIGHT, WIDTH) is None
        assert CocoReader._rle_problem(uncompressed_rle(mask), HEIGHT, WIDTH) is None


def rewrite_coco(root: Path, change) -> Path:
    """Apply ``change`` to the parsed val annotation file of :func:`make_coco` and write it back."""
    annotation_file = root / "annotations" / "instances_val2017.json"
    content = json.loads(annotation_file.read_text())
    change(content)
    annotation_file.write_text(json.dumps(content))
    return annotation_file


@pytest.mark.parametrize("side", ["images", "annotations", "both"])
def test_coco_ids_match_whether_written_as_numbers_or_strings(tmp_path: Path, side: str) -> None:
    make_coco(tmp_path)

    def stringify(content: dict) -> None:
        if side in ("images", "both"):
            for image in content["images"]:
                image["id"] = str(image["id"])
        if side in ("annotations", "both"):
            for annotation in content["annotations"]:
                annotation["image_id"] = str(annotation["image_id"])
                annotation["id"] = str(annotation["id"])

    rewrite_coco(tmp_path, stringify)
    reader = CocoReader(tmp_path, "val")
    assert reader.keys() == ["000000000001", "000000000003", "000000000004"]
    sample = reader.load("000000000001")
    assert list(sample.masks) == ["101", "102", "105"]
    np.testing.assert_array_equal(sample.masks["102"], COCO_RLE_MASK)


def test_coco_annotation_ids_of_mixed_types_are_ordered_without_error(tmp_path: Path) -> None:
    make_coco(tmp_path)

    def rename(content: dict) -> None:
        content["annotations"][0]["id"] = "poly-a"  # 101
        content["annotations"][4]["id"] = 9  # 105

    rewrite_coco(tmp_path, rename)
    # numbers first, in numeric order (9 before 102), then the other names
    assert list(CocoReader(tmp_path, "val").load("000000000001").masks) == ["9", "102", "poly-a"]


def test_coco_annotations_that_name_no_listed_image_are_an_error(tmp_path: Path) -> None:
    make_coco(tmp_path)

    def rename_images(content: dict) -> None:
        for image in content["images"]:
            image["id"] = f"img-{image['id']}"

    annotation_file = rewrite_coco(tmp_path, rename_images)
    with pytest.raises(DatasetFileError, match=r"none of the 9 annotations has the id of an image") as raised:
        CocoReader(tmp_path, "val").keys()
    assert raised.value.path == str(annotation_file)
    assert "'img-1'" in str(raised.value)
    assert "1" in str(raised.value)


def test_coco_images_without_any_object_are_an_error_not_an_empty_dataset(tmp_path: Path) -> None:
    make_coco(tmp_path)

    def crowd_only(content: dict) -> None:
        for annotation in content["annotations"]:
            annotation["iscrowd"] = 1

    rewrite_coco(tmp_path, crowd_only)
    with pytest.raises(DatasetFileError, match=r"none of its 4 images has a non-crowd annotation"):
        CocoReader(tmp_path, "val").keys()
    # a selection that stops early never walks the whole list and is not judged
    assert CocoReader(tmp_path, "val", limit=0).keys() == []


@pytest.mark.parametrize("image_id", [None, True, [1], 1.5])
def test_coco_image_id_that_is_no_id_is_an_error(tmp_path: Path, image_id: object) -> None:
    make_coco(tmp_path)
    rewrite_coco(tmp_path, lambda content: content["images"][0].update(id=image_id))
    with pytest.raises(DatasetFileError, match="id"):
        CocoReader(tmp_path, "val").keys()


def test_coco_two_images_with_one_id_are_an_error(tmp_path: Path) -> None:
    make_coco(tmp_path)
    rewrite_coco(tmp_path, lambda content: content["images"][1].update(id="1"))
    with pytest.raises(DatasetFileError, match="two images have the id 1"):
        CocoReader(tmp_path, "val").keys()


@pytest.mark.parametrize("how", ["dot-dot", "absolute"])
def test_coco_file_name_outside_the_dataset_is_refused(tmp_path: Path, how: str) -> None:
    root = tmp_path / "coco"
    make_coco(root)
    outside = tmp_path / "outside.jpg"
    write_jpeg(outside, flat_image((30, 30, 200)))  # a readable image of the right size: only the check refuses it
    file_name = "../../outside.jpg" if how == "dot-dot" else str(outside)
    annotation_file = rewrite_coco(root, lambda content: content["images"][2].update(file_name=file_name))
    reader = CocoReader(root, "val")
    assert [sample.image_key for sample in reader] == ["000000000001", "000000000004"]
    [skipped] = reader.skipped
    assert skipped.image_key == "outside"
    assert skipped.path == str(annotation_file)
    assert repr(file_name) in skipped.reason
    assert "outside" in skipped.reason


# ------------------------------------------------------------------------------------------------ ADE20K


def make_ade20k(root: Path) -> Path:
    base = root / "ADEChallengeData2016"
    for folder, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for index in (1, 2):
            stem = f"{prefix}_{index:08d}"
            write_jpeg(base / "images" / folder / f"{stem}.jpg", flat_image((40 * index, 90, 160)))
            labels = np.zeros((HEIGHT, WIDTH), np.uint8)
            labels[0:5, 0:10] = 3
            labels[10:20, 5:30] = 12 + index
            write_gray_png(base / "annotations" / folder / f"{stem}.png", labels)
    return base


def test_ade20k_one_mask_per_class(tmp_path: Path) -> None:
    make_ade20k(tmp_path)
    reader = Ade20kReader(tmp_path, "validation")
    assert reader.split == "val"
    assert reader.keys() == ["ADE_val_00000001", "ADE_val_00000002"]
    sample = reader.load("ADE_val_00000002")
    assert_colour(sample.image, (80, 90, 160))
    assert list(sample.masks) == ["3", "14"]
    np.testing.assert_array_equal(sample.masks["3"], box(0, 0, 5, 10))
    np.testing.assert_array_equal(sample.masks["14"], box(10, 5, 20, 30))
    assert sample.dataset == "ade20k"


@pytest.mark.parametrize("split", ["train", "training"])
def test_ade20k_split_aliases_and_root_forms(tmp_path: Path, split: str) -> None:
    base = make_ade20k(tmp_path)
    expected = ["ADE_train_00000001", "ADE_train_00000002"]
    assert Ade20kReader(tmp_path, split).keys() == expected
    assert Ade20kReader(base, split).keys() == expected
    assert Ade20kReader(base, split).split == "train"


def test_ade20k_missing_annotation_is_skipped(tmp_path: Path) -> None:
    base = make_ade20k(tmp_path)
    missing = base / "annotations" / "training" / "ADE_train_00000001.png"
    missing.unlink()
    reader = Ade20kReader(tmp_path, "train")
    assert [sample.image_key for sample in reader] == ["ADE_train_00000002"]
    assert [(s.image_key, s.path) for s in reader.skipped] == [("ADE_train_00000001", str(missing))]


def test_ade20k_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no split 'test'"):
        Ade20kReader(tmp_path, "test")
    with pytest.raises(DatasetError, match=r"images[/\\]validation"):
        Ade20kReader(tmp_path, "val")


# ------------------------------------------------------------------------------------------------- DAVIS

DAVIS_FRAMES = {"bear": 5, "dog": 3}


def davis_colour(sequence: str, frame: int) -> tuple[int, int, int]:
    return (50 * frame, 200 if sequence == "bear" else 40, 100)


def make_davis(root: Path, resolution: str = "480p") -> None:
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("bear\ndog\n")
    (sets / "test-dev.txt").write_text("dog\n")
    for sequence, count in DAVIS_FRAMES.items():
        for frame in range(count):
            write_jpeg(
                root / "JPEGImages" / resolution / sequence / f"{frame:05d}.jpg",
                flat_image(davis_colour(sequence, frame)),
            )
            labels = np.zeros((HEIGHT, WIDTH), np.uint8)
            labels[0:4, frame : frame + 4] = 1
            labels[10:14, 10:20] = 2
            labels[19, :] = 255  # void border: not an object
            write_palette_png(root / "Annotations" / resolution / sequence / f"{frame:05d}.png", labels)


def test_davis_keys_and_masks(tmp_path: Path) -> None:
    make_davis(tmp_path)
    reader = DavisReader(tmp_path, "val")
    assert reader.keys() == [f"bear/{f:05d}" for f in range(5)] + [f"dog/{f:05d}" for f in range(3)]
    sample = reader.load("bear/00003")
    assert sample.image_key == "bear/00003"
    assert_colour(sample.image, davis_colour("bear", 3))
    assert list(sample.masks) == ["1", "2"]  # 0 background and 255 void are no objects
    np.testing.assert_array_equal(sample.masks["1"], box(0, 3, 4, 7))
    np.testing.assert_array_equal(sample.masks["2"], box(10, 10, 14, 20))


def test_davis_every_applies_within_each_video(tmp_path: Path) -> None:
    make_davis(tmp_path)
    assert DavisReader(tmp_path, "val", every=2).keys() == [
        "bear/00000",
        "bear/00002",
        "bear/00004",
        "dog/00000",
        "dog/00002",
    ]
    assert DavisReader(tmp_path, "val", every=2, start=1, stop=4).keys() == [
        "bear/00002",
        "bear/00004",
        "dog/00000",
    ]
    assert DavisReader(tmp_path, "val", every=2, start=1, limit=2).keys() == ["bear/00002", "bear/00004"]
    assert DavisReader(tmp_path, "val", every=3, start=10).keys() == []


def test_davis_iteration_yields_loaded_frames_in_order(tmp_path: Path) -> None:
    make_davis(tmp_path)
    samples = list(DavisReader(tmp_path, "val", every=4))
    assert [s.image_key for s in samples] == ["bear/00000", "bear/00004", "dog/00000"]
    assert all(isinstance(s, Sample) for s in samples)
    assert_colour(samples[1].image, davis_colour("bear", 4))


def test_davis_corrupt_frame_is_skipped(tmp_path: Path) -> None:
    make_davis(tmp_path)
    broken = tmp_path / "JPEGImages" / "480p" / "dog" / "00001.jpg"
    truncate(broken)
    reader = DavisReader(tmp_path, "val")
    keys = [s.image_key for s in reader]
    assert "dog/00001" not in keys
    assert len(keys) == 7
    assert [(s.image_key, s.path) for s in reader.skipped] == [("dog/00001", str(broken))]


def test_davis_resolution_and_missing_files(tmp_path: Path) -> None:
    make_davis(tmp_path / "DAVIS", resolution="Full-Resolution")
    # root may be the DAVIS folder's parent
    reader = DavisReader(tmp_path, "test-dev", resolution="Full-Resolution")
    assert reader.keys() == ["dog/00000", "dog/00001", "dog/00002"]
    with pytest.raises(DatasetError, match=r"480p"):
        DavisReader(tmp_path, "val")
    with pytest.raises(InvalidInputError, match="resolution"):
        DavisReader(tmp_path, "val", resolution="1080p")
    with pytest.raises(DatasetError, match=r"ImageSets[/\\]2017[/\\]train\.txt"):
        DavisReader(tmp_path, "train", resolution="Full-Resolution")


def test_davis_missing_resolution_names_the_real_options(tmp_path: Path) -> None:
    make_davis(tmp_path, resolution="Full-Resolution")
    with pytest.raises(DatasetError) as raised:
        DavisReader(tmp_path, "val")  # 480p, the default, is not there
    message = str(raised.value)
    assert str(tmp_path / "JPEGImages" / "480p") in message
    # the resolution that is there, as the command line and the Python API spell it
    assert "--davis-resolution Full-Resolution" in message
    assert 'resolution="Full-Resolution"' in message
    for folder in ("JPEGImages", "Annotations"):
        shutil.rmtree(tmp_path / folder / "Full-Resolution")
    with pytest.raises(DatasetError, match=r"--davis-resolution \{480p,Full-Resolution\}") as raised:
        DavisReader(tmp_path, "val")
    assert "resolution=" in str(raised.value)


def test_davis_sequence_without_annotations_is_reported(tmp_path: Path) -> None:
    make_davis(tmp_path)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("bear\nghost\ndog\n")
    reader = DavisReader(tmp_path, "val", every=5)
    assert reader.keys() == ["bear/00000", "dog/00000"]
    list(reader)
    assert [s.image_key for s in reader.skipped] == ["ghost"]
    assert reader.skipped[0].path == str(tmp_path / "Annotations" / "480p" / "ghost")


# -------------------------------------------------------------------------------------------------- MOSE


def make_mose(root: Path) -> None:
    for folder, annotated in (("train", None), ("valid", 1)):
        videos = {"3ab1": 4, "0f2c": 2}
        meta = {"videos": {v: {"objects": {"1": {}}, "length": n} for v, n in videos.items()}}
        (root / f"meta_{folder}.json").write_text(json.dumps(meta))
        for video, count in videos.items():
            for frame in range(count):
                write_jpeg(root / folder / "JPEGImages" / video / f"{frame:05d}.jpg", flat_image((60 * frame, 0, 99)))
                if annotated is not None and frame >= annotated:
                    continue  # MOSE valid annotates the first frame only
                labels = np.zeros((HEIGHT, WIDTH), np.uint8)
                labels[frame : frame + 2, 0:10] = 1
                labels[15:20, 20:30] = 2 if video == "3ab1" else 0
                write_palette_png(root / folder / "Annotations" / video / f"{frame:05d}.png", labels)


def test_mose_train_every_annotated_frame(tmp_path: Path) -> None:
    make_mose(tmp_path)
    reader = MoseReader(tmp_path, "train")
    assert reader.keys() == ["0f2c/00000", "0f2c/00001", "3ab1/00000", "3ab1/00001", "3ab1/00002", "3ab1/00003"]
    sample = reader.load("3ab1/00002")
    assert_colour(sample.image, (120, 0, 99))
    assert list(sample.masks) == ["1", "2"]
    np.testing.assert_array_equal(sample.masks["1"], box(2, 0, 4, 10))
    np.testing.assert_array_equal(sample.masks["2"], box(15, 20, 20, 30))
    assert list(reader.load("0f2c/00001").masks) == ["1"]


@pytest.mark.parametrize("split", ["val", "valid"])
def test_mose_valid_first_frames_only(tmp_path: Path, split: str) -> None:
    make_mose(tmp_path)
    reader = MoseReader(tmp_path, split)
    assert reader.split == "val"
    assert reader.keys() == ["0f2c/00000", "3ab1/00000"]
    # root may also be the split folder, with the meta file next to it
    assert MoseReader(tmp_path / "valid", split).keys() == ["0f2c/00000", "3ab1/00000"]


def test_mose_missing_meta_and_missing_video(tmp_path: Path) -> None:
    make_mose(tmp_path)
    (tmp_path / "meta_valid.json").unlink()
    with pytest.raises(DatasetError, match=r"meta_valid\.json") as raised:
        MoseReader(tmp_path, "valid")
    assert str(tmp_path / "meta_valid.json") in str(raised.value)
    meta = json.loads((tmp_path / "meta_train.json").read_text())
    meta["videos"]["zzzz"] = {"objects": {}, "length": 3}
    (tmp_path / "meta_train.json").write_text(json.dumps(meta))
    reader = MoseReader(tmp_path, "train", every=10)
    assert reader.keys() == ["0f2c/00000", "3ab1/00000"]
    assert len(list(reader)) == 2
    assert [(s.image_key, s.path) for s in reader.skipped] == [
        ("zzzz", str(tmp_path / "train" / "Annotations" / "zzzz"))
    ]


# -------------------------------------------------------------------------------------------------- SA-V

# Frame colours far apart (corners of the RGB cube and mid-points) so that mp4 compression cannot confuse them.
SAV_COLOURS = [
    (r, g, b) for r in (0, 128, 255) for g in (0, 128, 255) for b in (0, 128, 255) if (r, g, b) != (128, 128, 128)
]
SAV_HEIGHT, SAV_WIDTH = 32, 48


def write_mp4(path: Path, frame_count: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24.0, (SAV_WIDTH, SAV_HEIGHT))
    assert writer.isOpened()
    for frame in range(frame_count):
        rgb = flat_image(SAV_COLOURS[frame], SAV_HEIGHT, SAV_WIDTH)
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()


def decoded_frame_index(image: np.ndarray) -> int:
    """Which frame colour the decoded image shows."""
    mean = image.reshape(-1, 3).mean(axis=0)
    distances = [np.abs(mean - np.array(colour)).max() for colour in SAV_COLOURS]
    assert min(distances) < 30, f"decoded colour {mean} matches no frame"
    return int(np.argmin(distances))


def sav_box(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    return box(top, left, bottom, right, SAV_HEIGHT, SAV_WIDTH)


SAV_EMPTY = np.zeros((SAV_HEIGHT, SAV_WIDTH), bool)
# masklet[annotated frame][object]; objects have masklet ids 7 and 9. Annotated frame 2 (video frame 8) is empty.
SAV_MASKLET = [
    [sav_box(0, 0, 5, 5), sav_box(10, 10, 20, 30)],
    [sav_box(1, 1, 6, 6), SAV_EMPTY],
    [SAV_EMPTY, SAV_EMPTY],
    [SAV_EMPTY, sav_box(20, 0, 32, 48)],
]


def make_sav_train(root: Path) -> None:
    shard = root / "sav_000"
    write_mp4(shard / "sav_000001.mp4", 13)
    annotation = {
        "video_id": "sav_000001",
        "video_frame_count": 13.0,
        "video_height": float(SAV_HEIGHT),
        "video_width": float(SAV_WIDTH),
        "masklet": [[compressed_rle(mask) for mask in frame] for frame in SAV_MASKLET],
        "masklet_id": [7, 9],
        "masklet_num": 2,
    }
    (shard / "sav_000001_manual.json").write_text(json.dumps(annotation))
    # a second shard with one video of two annotated frames
    second = root / "sav_001"
    write_mp4(second / "sav_001000.mp4", 5)
    annotation = dict(annotation, video_id="sav_001000", masklet=annotation["masklet"][:2])
    (second / "sav_001000_manual.json").write_text(json.dumps(annotation))
    # a folder that is no shard is ignored
    (root / "notes").mkdir()


def test_sav_train_keys_skip_frames_without_visible_objects(tmp_path: Path) -> None:
    make_sav_train(tmp_path)
    reader = SavReader(tmp_path, "train")
    assert reader.keys() == [
        "sav_000/sav_000001/00000",
        "sav_000/sav_000001/00004",
        "sav_000/sav_000001/00012",
        "sav_001/sav_001000/00000",
        "sav_001/sav_001000/00004",
    ]
    assert SavReader(tmp_path, "train", every=2).keys() == [
        "sav_000/sav_000001/00000",
        "sav_000/sav_000001/00012",
        "sav_001/sav_001000/00000",
    ]
    assert SavReader(tmp_path, "train", start=2, stop=4).keys() == [
        "sav_000/sav_000001/00012",
        "sav_001/sav_001000/00000",
    ]


def test_sav_train_decodes_the_right_frame_and_masks(tmp_path: Path) -> None:
    make_sav_train(tmp_path)
    reader = SavReader(tmp_path, "train")
    samples = {sample.image_key: sample for sample in reader}
    assert reader.skipped == []
    assert len(samples) == 5
    for key, sample in samples.items():
        frame = int(key.rsplit("/", 1)[1])
        assert decoded_frame_index(sample.image) == frame
        assert sample.image.shape == (SAV_HEIGHT, SAV_WIDTH, 3)
    first = samples["sav_000/sav_000001/00000"]
    assert list(first.masks) == ["7", "9"]
    np.testing.assert_array_equal(first.masks["7"], SAV_MASKLET[0][0])
    np.testing.assert_array_equal(first.masks["9"], SAV_MASKLET[0][1])
    # object 9 is empty in frame 4 and object 7 in frame 12: each is left out there
    assert list(samples["sav_000/sav_000001/00004"].masks) == ["7"]
    assert list(samples["sav_000/sav_000001/00012"].masks) == ["9"]
    np.testing.assert_array_equal(samples["sav_000/sav_000001/00012"].masks["9"], SAV_MASKLET[3][1])


def test_sav_train_random_access_and_unannotated_frames(tmp_path: Path) -> None:
    make_sav_train(tmp_path)
    reader = SavReader(tmp_path, "train")
    # forward, backward (reopens the video) and across videos
    for key in ("sav_000/sav_000001/00012", "sav_000/sav_000001/00004", "sav_001/sav_001000/00004"):
        assert decoded_frame_index(reader.load(key).image) == int(key[-5:])
    assert reader.load("sav_000/sav_000001/00008").masks == {}
    with pytest.raises(DatasetError, match="not annotated"):
        reader.load("sav_000/sav_000001/00005")
    with pytest.raises(DatasetError, match="not annotated"):
        reader.load("sav_000/sav_000001/00016")
    with pytest.raises(DatasetError, match="malformed"):
        reader.load("sav_000001/00004")
    # the reader pickles (for worker processes) even with a video open
    clone = pickle.loads(pickle.dumps(reader))
    assert decoded_frame_index(clone.load("sav_000/sav_000001/00004").image) == 4
    reader.close()


def test_sav_train_broken_files_are_reported(tmp_path: Path) -> None:
    make_sav_train(tmp_path)
    (tmp_path / "sav_001" / "sav_001000.mp4").unlink()
    broken_json = tmp_path / "sav_002" / "sav_002000_manual.json"
    broken_json.parent.mkdir()
    broken_json.write_text("{")
    (tmp_path / "sav_002" / "sav_002000.mp4").write_bytes(b"not a video")
    short_json = tmp_path / "sav_000" / "sav_000001_manual.json"
    annotation = json.loads(short_json.read_text())
    annotation["masklet"].append(annotation["masklet"][0])  # frame 16 is past the end of the 13-frame video
    short_json.write_text(json.dumps(annotation))
    reader = SavReader(tmp_path, "train")
    keys = [sample.image_key for sample in reader]
    assert keys == ["sav_000/sav_000001/00000", "sav_000/sav_000001/00004", "sav_000/sav_000001/00012"]
    assert [(s.image_key, Path(s.path).name) for s in reader.skipped] == [
        ("sav_001/sav_001000", "sav_001000.mp4"),
        ("sav_002/sav_002000", "sav_002000_manual.json"),
        ("sav_000/sav_000001/00016", "sav_000001.mp4"),
    ]


def test_sav_train_root_forms_and_missing_shards(tmp_path: Path) -> None:
    make_sav_train(tmp_path / "sav_train")
    assert len(SavReader(tmp_path, "train")) == 5
    assert SavReader(tmp_path / "sav_train" / "sav_001", "train").keys() == [
        "sav_001/sav_001000/00000",
        "sav_001/sav_001000/00004",
    ]
    with pytest.raises(DatasetError, match="shard"):
        SavReader(tmp_path / "sav_train" / "notes", "train")


def make_sav_val(root: Path) -> Path:
    split = root / "sav_val"
    split.mkdir(parents=True)
    (split / "sav_val.txt").write_text("sav_000123\nsav_000456\n")
    for video in ("sav_000123", "sav_000456"):
        for frame in range(9):
            write_jpeg(split / "JPEGImages_24fps" / video / f"{frame:05d}.jpg", flat_image(SAV_COLOURS[frame]))
    objects = split / "Annotations_6fps" / "sav_000123"
    for frame in (0, 4, 8):
        write_gray_png(objects / "000" / f"{frame:05d}.png", box(frame, 0, frame + 3, 5) * 255)
    write_gray_png(objects / "001" / "00004.png", box(10, 10, 20, 20))  # values 0/1 are a valid mask too
    write_gray_png(objects / "001" / "00008.png", np.zeros((HEIGHT, WIDTH)))
    write_gray_png(split / "Annotations_6fps" / "sav_000456" / "002" / "00000.png", box(0, 0, 2, 2) * 255)
    return split


def test_sav_val_layout(tmp_path: Path) -> None:
    split = make_sav_val(tmp_path)
    reader = SavReader(tmp_path, "val")
    expected = ["sav_000123/00000", "sav_000123/00004", "sav_000123/00008", "sav_000456/00000"]
    assert reader.keys() == expected
    assert SavReader(split, "val").keys() == expected
    samples = {sample.image_key: sample for sample in reader}
    assert_colour(samples["sav_000123/00004"].image, SAV_COLOURS[4])
    assert list(samples["sav_000123/00004"].masks) == ["000", "001"]
    np.testing.assert_array_equal(samples["sav_000123/00004"].masks["000"], box(4, 0, 7, 5))
    np.testing.assert_array_equal(samples["sav_000123/00004"].masks["001"], box(10, 10, 20, 20))
    assert list(samples["sav_000123/00008"].masks) == ["000"]  # object 001 is empty there
    assert SavReader(tmp_path, "val", every=2).keys() == ["sav_000123/00000", "sav_000123/00008", expected[3]]


def test_sav_val_missing_frame_is_skipped_and_missing_split_raises(tmp_path: Path) -> None:
    split = make_sav_val(tmp_path)
    missing = split / "JPEGImages_24fps" / "sav_000123" / "00004.jpg"
    missing.unlink()
    reader = SavReader(tmp_path, "val")
    assert len(list(reader)) == 3
    assert [(s.image_key, s.path) for s in reader.skipped] == [("sav_000123/00004", str(missing))]
    with pytest.raises(DatasetError, match=r"sav_test"):
        SavReader(tmp_path, "test")


# ------------------------------------------------------------------------------------------------ folder


def make_folder(root: Path) -> None:
    images = root / "images"
    images.mkdir(parents=True)
    Image.fromarray(flat_image((10, 120, 250))).save(images / "a_rgb.png")
    Image.fromarray(np.full((HEIGHT, WIDTH), 77, np.uint8), mode="L").save(images / "b_gray.png")
    rgba = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    rgba[:] = (200, 100, 50, 0)  # fully transparent: the colour must survive, the alpha must go
    Image.fromarray(rgba, mode="RGBA").save(images / "c_rgba.png")
    Image.fromarray(np.full((HEIGHT, WIDTH), 65535 // 2, np.uint16)).save(images / "d_16bit.png")
    write_jpeg(images / "e_photo.JPG", flat_image((30, 60, 90)))
    Image.fromarray(flat_image((5, 5, 5))).save(images / "f_tiff.tif")
    (images / "notes.txt").write_text("not an image")
    for stem in ("a_rgb", "b_gray", "c_rgba", "d_16bit", "e_photo", "f_tiff"):
        write_gray_png(root / "masks" / stem / "thing.png", box(2, 3, 6, 9) * 255)
    write_gray_png(root / "masks" / "a_rgb" / "other.png", box(10, 0, 20, 30) * 1)
    write_gray_png(root / "masks" / "a_rgb" / "empty.png", np.zeros((HEIGHT, WIDTH)))


FOLDER_KEYS = ["a_rgb", "b_gray", "c_rgba", "d_16bit", "e_photo", "f_tiff"]


def test_folder_keys_images_and_masks(tmp_path: Path) -> None:
    make_folder(tmp_path)
    reader = FolderReader(tmp_path)
    assert reader.split == "all"
    assert reader.keys() == FOLDER_KEYS
    samples = {sample.image_key: sample for sample in reader}
    assert reader.skipped == []
    assert_colour(samples["a_rgb"].image, (10, 120, 250), tolerance=0)
    assert_colour(samples["b_gray"].image, (77, 77, 77), tolerance=0)
    assert_colour(samples["c_rgba"].image, (200, 100, 50), tolerance=0)
    assert_colour(samples["d_16bit"].image, (127, 127, 127), tolerance=1)
    assert_colour(samples["e_photo"].image, (30, 60, 90))
    assert_colour(samples["f_tiff"].image, (5, 5, 5), tolerance=0)
    assert list(samples["a_rgb"].masks) == ["other", "thing"]  # the all-zero mask is left out
    np.testing.assert_array_equal(samples["a_rgb"].masks["thing"], box(2, 3, 6, 9))
    np.testing.assert_array_equal(samples["a_rgb"].masks["other"], box(10, 0, 20, 30))
    assert samples["b_gray"].dataset == "folder"


def test_folder_colour_mask(tmp_path: Path) -> None:
    make_folder(tmp_path)
    colour_mask = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    colour_mask[0:3, 0:3] = (255, 0, 0, 255)
    colour_mask[5:8, 5:8] = (0, 0, 1, 255)
    colour_mask[10:12, 10:12] = (255, 255, 255, 0)  # transparent: background
    Image.fromarray(colour_mask, mode="RGBA").save(tmp_path / "masks" / "b_gray" / "thing.png")
    mask = FolderReader(tmp_path).load("b_gray").masks["thing"]
    np.testing.assert_array_equal(mask, box(0, 0, 3, 3) | box(5, 5, 8, 8))


@pytest.mark.parametrize(
    ("every", "start", "stop", "limit", "expected"),
    [
        (1, 0, None, None, FOLDER_KEYS),
        (2, 0, None, None, ["a_rgb", "c_rgba", "e_photo"]),
        (2, 1, None, None, ["c_rgba", "e_photo"]),
        (1, 1, 4, None, ["b_gray", "c_rgba", "d_16bit"]),
        (1, 1, 4, 2, ["b_gray", "c_rgba"]),
        (3, 0, 1, 5, ["a_rgb"]),
        (1, 0, None, 0, []),
        (1, 9, None, None, []),
    ],
)
def test_folder_selection(
    tmp_path: Path, every: int, start: int, stop: int | None, limit: int | None, expected: list[str]
) -> None:
    make_folder(tmp_path)
    reader = FolderReader(tmp_path, "mine", every=every, start=start, stop=stop, limit=limit)
    assert reader.keys() == expected
    assert len(reader) == len(expected)
    assert [sample.split for sample in reader] == ["mine"] * len(expected)


def test_folder_broken_files_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_folder(tmp_path)
    truncate(tmp_path / "images" / "e_photo.JPG")
    (tmp_path / "images" / "f_tiff.tif").write_bytes(b"garbage, not a tiff")
    mask_folder = tmp_path / "masks" / "b_gray"
    for path in mask_folder.iterdir():
        path.unlink()
    mask_folder.rmdir()
    (tmp_path / "masks" / "c_rgba" / "thing.png").write_bytes(b"\x89PNG broken")
    write_gray_png(tmp_path / "masks" / "d_16bit" / "thing.png", np.ones((5, 5)))
    reader = FolderReader(tmp_path)
    with caplog.at_level(logging.WARNING):
        keys = [sample.image_key for sample in reader]
    assert keys == ["a_rgb"]
    skipped = {s.image_key: s for s in reader.skipped}
    assert list(skipped) == ["b_gray", "c_rgba", "d_16bit", "e_photo", "f_tiff"]
    assert skipped["b_gray"].path == str(mask_folder)
    assert skipped["c_rgba"].path == str(tmp_path / "masks" / "c_rgba" / "thing.png")
    assert "5x5" in skipped["d_16bit"].reason
    assert skipped["e_photo"].path == str(tmp_path / "images" / "e_photo.JPG")
    assert skipped["f_tiff"].path == str(tmp_path / "images" / "f_tiff.tif")
    for entry in reader.skipped:
        assert entry.path in caplog.text
    # a second pass starts a fresh record
    list(reader)
    assert len(reader.skipped) == 5


def test_images_above_the_pixel_limit_are_skipped_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_folder(tmp_path)
    monkeypatch.delenv("USAM_MAX_IMAGE_PIXELS", raising=False)
    # Pillow's own guard, lowered so the 20x30 images are in its warning band (above the limit, below twice it)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", HEIGHT * WIDTH - 1)
    reader = FolderReader(tmp_path, limit=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning may not escape
        assert list(reader) == []
    assert [(s.image_key, Path(s.path).name) for s in reader.skipped] == [
        ("a_rgb", "a_rgb.png"),
        ("b_gray", "b_gray.png"),
    ]
    reason = reader.skipped[0].reason
    assert "image is 30x20 = 600 pixels, more than Pillow's safety limit against decompression bombs of 599" in reason
    assert "USAM_MAX_IMAGE_PIXELS" in reason
    # raising the limit lets them through; a malformed limit stops the run instead of skipping every image
    monkeypatch.setenv("USAM_MAX_IMAGE_PIXELS", "600")
    assert [sample.image_key for sample in reader] == ["a_rgb", "b_gray"]
    monkeypatch.setenv("USAM_MAX_IMAGE_PIXELS", "many")
    with pytest.raises(InvalidInputError, match="USAM_MAX_IMAGE_PIXELS"):
        list(reader)


def test_folder_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        FolderReader(tmp_path / "nowhere")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=r"masks") as raised:
        FolderReader(tmp_path)
    assert "root/masks/<name>/<object>.png" in str(raised.value)
    (tmp_path / "masks").mkdir()
    write_jpeg(tmp_path / "images" / "x.jpg", flat_image((0, 0, 0)))
    Image.fromarray(flat_image((0, 0, 0))).save(tmp_path / "images" / "x.png")
    with pytest.raises(DatasetError, match="same name"):
        FolderReader(tmp_path).keys()


def test_keys_do_not_decode_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder(tmp_path)
    make_davis(tmp_path / "davis")

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("keys() decoded a file")

    monkeypatch.setattr("PIL.Image.open", forbidden)
    assert FolderReader(tmp_path).keys() == FOLDER_KEYS
    assert len(DavisReader(tmp_path / "davis", "val").keys()) == 8


# ------------------------------------------------------------------------------------ names from data files


@pytest.mark.parametrize(
    "name", ["a.jpg", "sub/a.jpg", "sub/./a.jpg", "a..b.jpg", ".hidden"], ids=lambda name: repr(name)
)
def test_path_inside_accepts_relative_names(tmp_path: Path, name: str) -> None:
    assert path_inside(tmp_path, name, source=tmp_path / "list.txt", what="image") == tmp_path / name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "../a.jpg",
        "sub/../../a.jpg",
        "/etc/passwd",
        "..\\a.jpg",
        "\\\\server\\share\\a.jpg",
        "C:\\a.jpg",
        "C:a",
    ],
    ids=lambda name: repr(name),
)
def test_path_inside_refuses_names_that_leave_the_folder(tmp_path: Path, name: str) -> None:
    source = tmp_path / "list.txt"
    with pytest.raises(DatasetFileError, match="not a relative path inside") as raised:
        path_inside(tmp_path, name, source=source, what="image")
    assert raised.value.path == str(source)
    assert repr(name) in str(raised.value)


def write_stolen_annotations(folder: Path) -> None:
    """Annotation PNGs outside a dataset, which a video name with ``..`` or an absolute path would reach."""
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    labels[0:4, 0:4] = 1
    write_palette_png(folder / "00000.png", labels)
    write_gray_png(folder / "000" / "00000.png", labels * 255)  # SA-V's per-object layout


@pytest.mark.parametrize("how", ["dot-dot", "absolute"])
def test_video_names_outside_the_dataset_are_refused(tmp_path: Path, how: str) -> None:
    stolen = tmp_path / "stolen"
    write_stolen_annotations(stolen)

    def name_for(annotation_folder: Path) -> str:
        """A video name that leads from ``annotation_folder`` to ``stolen``."""
        if how == "absolute":
            return str(stolen)
        return "/".join([".."] * len(annotation_folder.relative_to(tmp_path).parts) + ["stolen"])

    make_davis(tmp_path / "davis")
    davis_list = tmp_path / "davis" / "ImageSets" / "2017" / "val.txt"
    davis_name = name_for(tmp_path / "davis" / "Annotations" / "480p")
    davis_list.write_text(f"bear\n{davis_name}\n")

    (tmp_path / "mose").mkdir()
    make_mose(tmp_path / "mose")
    mose_meta = tmp_path / "mose" / "meta_train.json"
    mose_name = name_for(tmp_path / "mose" / "train" / "Annotations")
    meta = json.loads(mose_meta.read_text())
    meta["videos"] = {"0f2c": meta["videos"]["0f2c"], mose_name: {"objects": {}, "length": 1}}
    mose_meta.write_text(json.dumps(meta))

    split = make_sav_val(tmp_path / "sav")
    sav_list = split / "sav_val.txt"
    sav_name = name_for(split / "Annotations_6fps")
    sav_list.write_text(f"sav_000456\n{sav_name}\n")

    for reader, source, name, good_keys in (
        (DavisReader(tmp_path / "davis", "val", every=5), davis_list, davis_name, ["bear/00000"]),
        (MoseReader(tmp_path / "mose", "train", every=5), mose_meta, mose_name, ["0f2c/00000"]),
        (SavReader(tmp_path / "sav", "val"), sav_list, sav_name, ["sav_000456/00000"]),
    ):
        assert reader.keys() == good_keys, reader.name
        assert [sample.image_key for sample in reader] == good_keys
        [skipped] = reader.skipped
        assert (skipped.image_key, skipped.path) == (name, str(source))
        assert "not a relative path inside" in skipped.reason


# ---------------------------------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize(
    ("option", "value"),
    [("every", 0), ("every", True), ("every", 1.5), ("start", -1), ("stop", -2), ("limit", -1)],
)
def test_selection_arguments_are_validated(tmp_path: Path, option: str, value: object) -> None:
    make_folder(tmp_path)
    with pytest.raises(InvalidInputError, match=option):
        FolderReader(tmp_path, **{option: value})


def test_open_dataset(tmp_path: Path) -> None:
    make_davis(tmp_path)
    reader = open_dataset("DAVIS", tmp_path, "val", every=2, limit=1)
    assert isinstance(reader, DavisReader)
    assert reader.keys() == ["bear/00000"]
    with pytest.raises(DatasetError, match="coco, ade20k, davis, mose, sav, folder"):
        open_dataset("cityscapes", tmp_path, "val")
    with pytest.raises(InvalidInputError, match="resolution"):
        open_dataset("folder", tmp_path, "all", resolution="480p")
    assert set(DATASETS) == {"coco", "ade20k", "davis", "mose", "sav", "folder"}
    assert all(issubclass(reader_class, DatasetReader) for reader_class in DATASETS.values())
    assert issubclass(DatasetError, UsamError)


# Splits each reader accepts on an empty folder, so that only the argument checks can fail.
SOME_SPLIT = {"coco": "val", "ade20k": "val", "davis": "val", "mose": "val", "sav": "val", "folder": "all"}


@pytest.mark.parametrize("name", sorted(SOME_SPLIT))
@pytest.mark.parametrize(("option", "value"), [("every", 0), ("start", -1), ("stop", 1.0), ("limit", False)])
def test_every_reader_validates_the_selection_arguments(tmp_path: Path, name: str, option: str, value: object) -> None:
    with pytest.raises(InvalidInputError, match=option):
        open_dataset(name, tmp_path, SOME_SPLIT[name], **{option: value})


@pytest.mark.parametrize("name", sorted(SOME_SPLIT))
def test_every_reader_reports_a_missing_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError, match="does not exist") as raised:
        open_dataset(name, tmp_path / "nowhere", SOME_SPLIT[name])
    assert str(tmp_path / "nowhere") in str(raised.value)


@pytest.mark.parametrize(("name", "title"), [("ade20k", "ADE20K"), ("mose", "MOSE"), ("sav", "SA-V")])
def test_unknown_split_is_reported_before_other_arguments(tmp_path: Path, name: str, title: str) -> None:
    with pytest.raises(DatasetError, match=f"{title} has no split 'nope'; use one of "):
        open_dataset(name, tmp_path / "nowhere", "nope", every=0)


def test_open_dataset_lists_each_readers_options(tmp_path: Path) -> None:
    make_davis(tmp_path / "DAVIS", resolution="Full-Resolution")
    reader = open_dataset("davis", tmp_path, "test-dev", resolution="Full-Resolution", start=1)
    assert isinstance(reader, DavisReader)
    assert reader.keys() == ["dog/00001", "dog/00002"]
    assert repr(reader).endswith("start=1, stop=None, limit=None, resolution='Full-Resolution')")
    with pytest.raises(InvalidInputError, match=r"its options: resolution, every, start, stop, limit$"):
        open_dataset("davis", tmp_path, "val", size=3)
    with pytest.raises(InvalidInputError, match=r"takes no option resolution; its options: every, start, stop, limit$"):
        open_dataset("folder", tmp_path, "all", resolution="480p")


def test_davis_unreadable_sequence_list(tmp_path: Path) -> None:
    make_davis(tmp_path)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_bytes(b"bear\n\xff\xfe\n")
    with pytest.raises(DatasetError, match=r"DAVIS sequence list .*val\.txt cannot be read"):
        DavisReader(tmp_path, "val").keys()
