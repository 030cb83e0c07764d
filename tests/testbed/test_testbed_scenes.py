"""The test-bed's synthetic scenes: determinism, the targets' invariants, the recipe's statistics, the dataset."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest

from usam.datasets import open_dataset
from usam.errors import DatasetError, InvalidInputError
from usam.testbed import (
    LABELS_FILE,
    Shape,
    TargetKind,
    make_scene,
    read_scene_labels,
    scene_name,
    scene_seed,
    write_scene_dataset,
)
from usam.testbed.scenes import (
    MIN_TARGET_PIXELS,
    NOISE_SIGMA_RANGE,
    OBJECT_COLOUR_DISTANCE,
    PART_COLOUR_DISTANCE,
)

STATISTICS_SCENES = 300


@pytest.fixture(scope="module")
def scenes():
    """300 scenes of one dataset seed; the generation time per scene is printed (run with -s to see it)."""
    start = time.perf_counter()
    drawn = [make_scene(scene_seed(123, index)) for index in range(STATISTICS_SCENES)]
    milliseconds = 1000 * (time.perf_counter() - start) / STATISTICS_SCENES
    print(f"\nscene generation: {milliseconds:.2f} ms per scene over {STATISTICS_SCENES} scenes")
    return drawn


def test_same_seed_gives_identical_scenes_and_different_seeds_differ():
    first, again, other = make_scene(7), make_scene(7), make_scene(8)
    assert first.image.tobytes() == again.image.tobytes()
    assert [(t.kind, t.object_index, t.mask.tobytes()) for t in first.targets] == [
        (t.kind, t.object_index, t.mask.tobytes()) for t in again.targets
    ]
    assert first.image.tobytes() != other.image.tobytes()
    # scene seeds differ between scenes of one dataset and between datasets of neighbouring seeds
    images = {make_scene(scene_seed(seed, index)).image.tobytes() for seed in (7, 8) for index in (0, 1)}
    assert len(images) == 4


def test_a_generator_draws_a_stream_of_fresh_scenes():
    rng = np.random.default_rng(3)
    first, second = make_scene(rng), make_scene(rng)
    assert first.image.tobytes() != second.image.tobytes()
    assert make_scene(np.random.default_rng(3)).image.tobytes() == first.image.tobytes()


def test_targets_are_the_visible_regions(scenes):
    for scene in scenes:
        height, width = scene.image.shape[:2]
        assert scene.image.dtype == np.uint8
        assert scene.image.shape == (height, width, 3)
        covered = np.zeros((height, width), dtype=int)
        wholes, parts = {}, {}
        for target in scene.targets:
            assert target.mask.dtype == bool
            assert target.mask.shape == (height, width)
            assert target.mask.sum() >= MIN_TARGET_PIXELS
            if target.kind is TargetKind.PART:
                parts[target.object_index] = target.mask
            else:
                covered += target.mask
                if target.kind is TargetKind.WHOLE:
                    wholes[target.object_index] = target.mask
        # singles and wholes never share a pixel: each pixel shows one object on top
        assert covered.max() <= 1
        # wholes and parts come in pairs; the part lies inside its whole and differs from it
        assert wholes.keys() == parts.keys()
        for index, whole in wholes.items():
            assert not (parts[index] & ~whole).any()
            assert (whole & ~parts[index]).sum() >= MIN_TARGET_PIXELS
            assert scene.objects[index].part_colour is not None
        assert len({(t.object_index, t.kind) for t in scene.targets}) == len(scene.targets)
        assert len({t.name for t in scene.targets}) == len(scene.targets)


def test_target_pixels_show_their_objects_colour(scenes):
    # A pixel differs from its base colour by the texture (at most 0.12 per channel, 0.21 in RGB distance) plus
    # noise (sigma <= 0.06 per channel), so nearly all of a region's pixels lie within 0.35 of its colour (measured:
    # at least 97.6 % in every region). A mask that takes in pixels of another object or of another part (whose
    # colours are at least 0.35 or 0.4 away) fails this.
    checked = 0
    for scene in scenes:
        image = scene.image.astype(float) / 255
        for target in scene.targets:
            scene_object = scene.objects[target.object_index]
            if target.kind is TargetKind.PART:
                region, colour = target.mask, scene_object.part_colour
            elif target.kind is TargetKind.WHOLE:
                part = next(t.mask for t in scene.targets if t.object_index == target.object_index and t is not target)
                region, colour = target.mask & ~part, scene_object.colour
            elif scene_object.part_colour is None:
                region, colour = target.mask, scene_object.colour
            else:
                continue  # a single that shows a few pixels of its too-small part has two colours
            distances = np.linalg.norm(image[region] - np.asarray(colour), axis=1)
            assert np.mean(distances < OBJECT_COLOUR_DISTANCE) >= 0.9
            checked += 1
    assert checked > 0.9 * sum(len(scene.targets) for scene in scenes)


def test_recipe_statistics_over_300_scenes(scenes):
    targets = [target for scene in scenes for target in scene.targets]
    objects = [scene_object for scene in scenes for scene_object in scene.objects]
    # The prototype measured 3.18 targets per scene (7,958 in 2,500 scenes); the count per scene has a standard
    # deviation of about 1.7, so the mean of 300 scenes lies within +-0.1 of its expectation (1 SE); the bounds
    # leave several SE either side.
    targets_per_scene = len(targets) / len(scenes)
    assert 2.5 <= targets_per_scene <= 4.0
    # Prototype: 1,815 parts of 7,958 targets (0.23).
    part_fraction = sum(t.kind is TargetKind.PART for t in targets) / len(targets)
    assert 0.1 <= part_fraction <= 0.35
    assert sum(t.kind is TargetKind.WHOLE for t in targets) == sum(t.kind is TargetKind.PART for t in targets)
    # 45 % of the non-ring objects get a part (about 560 such objects here: SE 0.02); rings never do.
    non_rings = [o for o in objects if o.shape is not Shape.RING]
    assert 0.35 <= np.mean([o.part_colour is not None for o in non_rings]) <= 0.55
    assert all(o.part_colour is None for o in objects if o.shape is Shape.RING)
    # Half of the objects after the first are placed against an earlier one (about 450 of them: SE 0.024).
    later = [o for scene in scenes for o in scene.objects[1:]]
    assert 0.4 <= np.mean([o.near_earlier for o in later]) <= 0.6
    assert {len(scene.objects) for scene in scenes} == {1, 2, 3, 4}
    assert {o.shape for o in objects} == set(Shape)
    for scene in scenes:
        assert NOISE_SIGMA_RANGE[0] <= scene.noise_sigma <= NOISE_SIGMA_RANGE[1]
        colours = [np.asarray(scene.background_colour)] + [np.asarray(o.colour) for o in scene.objects]
        for first, second in itertools.combinations(colours, 2):
            assert np.linalg.norm(first - second) >= OBJECT_COLOUR_DISTANCE
        for scene_object in scene.objects:
            if scene_object.part_colour is not None:
                distance = np.linalg.norm(np.asarray(scene_object.part_colour) - np.asarray(scene_object.colour))
                assert distance >= PART_COLOUR_DISTANCE


def test_size_is_configurable_and_checked():
    scene = make_scene(5, size=64)
    assert scene.image.shape == (64, 64, 3)
    assert all(target.mask.shape == (64, 64) for target in scene.targets)
    assert all(target.mask.sum() >= MIN_TARGET_PIXELS / 4 for target in scene.targets)
    with pytest.raises(InvalidInputError, match="size"):
        make_scene(5, size=16)
    with pytest.raises(InvalidInputError, match="seed"):
        scene_seed(-1, 0)


def test_written_dataset_reads_back_with_the_same_masks(tmp_path):
    root = write_scene_dataset(tmp_path / "scenes", num_scenes=4, seed=11)
    labels = read_scene_labels(root)
    samples = list(open_dataset("folder", root, "test"))
    assert [sample.image_key for sample in samples] == [scene_name(index) for index in range(4)]
    assert json.loads((root / LABELS_FILE).read_text()) == {key: str(kind) for key, kind in labels.items()}
    for index, sample in enumerate(samples):
        scene = make_scene(scene_seed(11, index))
        assert np.array_equal(sample.image, scene.image)
        assert sorted(sample.masks) == sorted(target.name for target in scene.targets)
        for target in scene.targets:
            assert np.array_equal(sample.masks[target.name], target.mask)
            assert labels[f"{sample.image_key}/{target.name}"] is target.kind
    assert len(labels) == sum(len(sample.masks) for sample in samples)


def test_writing_resumes_and_grows_without_rewriting_complete_scenes(tmp_path):
    root = write_scene_dataset(tmp_path / "scenes", num_scenes=3, seed=5)
    written = {path: path.stat().st_mtime_ns for path in root.rglob("*.png")}
    broken_scene = root / "masks" / scene_name(1)
    removed = sorted(broken_scene.iterdir())[0]
    removed.unlink()
    time.sleep(0.01)

    write_scene_dataset(root, num_scenes=5, seed=5)
    assert removed.exists()
    for path, modified in written.items():
        if path.parent != broken_scene and path.name != f"{scene_name(1)}.png":
            assert path.stat().st_mtime_ns == modified, path
    grown = write_scene_dataset(tmp_path / "grown", num_scenes=5, seed=5)
    for path in grown.rglob("*.png"):
        assert (root / path.relative_to(grown)).read_bytes() == path.read_bytes()
    assert read_scene_labels(root) == read_scene_labels(grown)


def test_writing_refuses_a_folder_of_other_scenes(tmp_path):
    root = write_scene_dataset(tmp_path / "scenes", num_scenes=2, seed=5)
    with pytest.raises(DatasetError, match="seed"):
        write_scene_dataset(root, num_scenes=2, seed=6)
    with pytest.raises(DatasetError, match="more than"):
        write_scene_dataset(root, num_scenes=1, seed=5)
    foreign = tmp_path / "foreign"
    (foreign / "images").mkdir(parents=True)
    (foreign / "images" / "photo.png").write_bytes(b"not ours")
    with pytest.raises(DatasetError, match="did not write"):
        write_scene_dataset(foreign, num_scenes=1, seed=5)
    assert (foreign / "images" / "photo.png").read_bytes() == b"not ours"


def test_missing_labels_are_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_scene_labels(tmp_path)
