"""Synthetic, deliberately ambiguous scenes for the trained test-bed, and the folder dataset made of them.

A scene is a small RGB image (128 x 128 by default) of one to four flat-coloured, textured shapes on a textured
background, with the ground-truth mask of every visible object. Some objects carry a nested part of another
colour; then both the whole object and the part are targets, so a click on the part is ambiguous by construction.
The recipe is the one the test-bed prototype measured (``/work/shared/testbed-prototype.md`` §1):

- background: a random colour, a random texture at half the objects' amplitude (flat, stripes, checker or smooth
  noise) and low-frequency colour noise;
- 1–4 objects (ellipse, rotated rectangle, ring whose hole shows what is beneath, radial-Fourier "blob") of
  radius 14–34 px, each with its own texture and a colour at least 0.35 (RGB distance, channels in [0, 1]) from the
  background's and every earlier object's; half of the objects after the first are placed against an earlier one
  (shifted by 0.8 r from a random visible foreground pixel), the others anywhere; later objects occlude earlier ones;
- 45 % of the objects that are not rings get a part: a smaller shape (0.3–0.55 r) clipped to the object, with a
  colour at least 0.4 from the object's. The object then gives two targets, the *whole* (object and part) and the
  *part*; an object without one gives a *single*;
- per-pixel Gaussian noise with sigma in [0.01, 0.06].

Targets are the visible regions; a target under 40 px is dropped. An object with a part yields a whole and a part
only when the part and the rest of the object each show at least 40 px; otherwise it yields a single (the click
would not be ambiguous). Lengths and the pixel threshold are given for 128 px and scale with the scene size.

A dataset of scenes is written in usam's ``folder`` layout (:mod:`usam.datasets.folder`)::

    out/
      scenes.json                 seed, size, number of scenes and generator version (checked when resuming)
      labels.json                 "<image>/<object>" -> "single" | "whole" | "part"
      images/scene_000000.png
      masks/scene_000000/object0-single.png
      masks/scene_000000/object1-whole.png
      masks/scene_000000/object1-part.png

Scene ``i`` of a dataset depends only on the seed and ``i`` (:func:`scene_seed`), not on the other scenes, so a
dataset can grow and a write can resume. Scenes are identical for a seed on one platform; the vectorised
trigonometry of other CPUs may move single boundary pixels.

Example:
    >>> scene = make_scene(0)
    >>> scene.image.shape, scene.image.dtype
    ((128, 128, 3), dtype('uint8'))
    >>> all(target.mask.sum() >= MIN_TARGET_PIXELS for target in scene.targets)
    True
    >>> sorted({str(target.kind) for target in scene.targets}) <= ["part", "single", "whole"]
    True
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from usam.errors import DatasetError
from usam.files import remove_stale_temporaries, write_bytes_atomically, write_json_atomically
from usam.validation import StrEnum, check_int

#: Scene side (px) for which the lengths below are given; other sizes scale them linearly (areas quadratically).
REFERENCE_SIZE = 128
#: Smallest scene side :func:`make_scene` accepts.
MIN_SIZE = 32
#: Object radius range (px at 128 px).
RADIUS_RANGE = (14.0, 34.0)
#: Objects per scene, both ends included.
OBJECT_COUNT_RANGE = (1, 4)
#: Probability that an object after the first is placed against an earlier one.
NEAR_EARLIER_PROBABILITY = 0.5
#: Distance, in units of the new object's radius, from a visible foreground pixel to a nearby object's centre.
NEAR_SHIFT = 0.8
#: Probability that an object other than a ring gets a nested part.
PART_PROBABILITY = 0.45
#: Part radius range, as fractions of the parent's radius.
PART_RADIUS_RANGE = (0.3, 0.55)
#: Smallest RGB distance (channels in [0, 1]) of an object's colour from the background's and earlier objects'.
OBJECT_COLOUR_DISTANCE = 0.35
#: Smallest RGB distance of a part's colour from its parent's.
PART_COLOUR_DISTANCE = 0.4
#: Peak amplitude of an object's texture; the background's texture has half of it.
TEXTURE_AMPLITUDE = 0.12
#: Peak amplitude of the background's low-frequency colour noise, per channel.
COLOUR_NOISE_AMPLITUDE = 0.08
#: Range of the per-pixel Gaussian noise's sigma (channels in [0, 1]).
NOISE_SIGMA_RANGE = (0.01, 0.06)
#: Smallest target (px at 128 px); smaller visible regions are not targets.
MIN_TARGET_PIXELS = 40
#: Bumped whenever the scenes a seed gives change, so a resumed dataset never mixes two generators.
GENERATOR_VERSION = 1

#: Name of the dataset's settings file (seed, size, number of scenes, generator version).
MANIFEST_FILE = "scenes.json"
#: Name of the dataset's file of target kinds ("<image>/<object>" -> kind).
LABELS_FILE = "labels.json"
_GENERATOR_NAME = "usam.testbed.scenes"


class TargetKind(StrEnum):
    """What a target is: an object without a part, an object with its part, or the part alone."""

    SINGLE = "single"
    WHOLE = "whole"
    PART = "part"


class Shape(StrEnum):
    """The outline of an object or a part."""

    ELLIPSE = "ellipse"
    RECTANGLE = "rectangle"
    RING = "ring"
    BLOB = "blob"


class Texture(StrEnum):
    """The brightness pattern over an object, a part or the background."""

    FLAT = "flat"
    STRIPES = "stripes"
    CHECKER = "checker"
    NOISE = "noise"


_OBJECT_SHAPES = tuple(Shape)
# A ring part would show its parent through its hole, which makes "the part" ill-defined.
_PART_SHAPES = (Shape.ELLIPSE, Shape.RECTANGLE, Shape.BLOB)
_TEXTURES = tuple(Texture)
_BLOB_HARMONICS = np.arange(2, 6)


@dataclass(frozen=True)
class SceneObject:
    """How one object of a scene was drawn (in drawing order: later objects occlude earlier ones).

    Attributes:
        shape: Its outline.
        centre: Centre ``(x, y)`` in pixels.
        radius: Radius in pixels.
        colour: Base RGB colour, channels in [0, 1].
        texture: Its texture.
        near_earlier: Whether it was placed against an earlier object.
        part_colour: Base RGB colour of its nested part, or None when it has none.
    """

    shape: Shape
    centre: tuple[float, float]
    radius: float
    colour: tuple[float, float, float]
    texture: Texture
    near_earlier: bool
    part_colour: tuple[float, float, float] | None


@dataclass
class SceneTarget:
    """One ground-truth target of a scene.

    Attributes:
        mask: H x W boolean mask of its visible pixels.
        kind: Single object, whole object with its part, or the part.
        object_index: Index of its object in :attr:`Scene.objects`.
    """

    mask: np.ndarray
    kind: TargetKind
    object_index: int

    @property
    def name(self) -> str:
        """Its object id in a written dataset, e.g. ``"object2-part"`` (unique within a scene)."""
        return f"object{self.object_index}-{self.kind}"


@dataclass
class Scene:
    """A synthetic image with its targets.

    Attributes:
        image: H x W x 3 uint8 RGB image.
        targets: Visible targets, by object in drawing order (a whole comes before its part). Singles and wholes
            are disjoint; a part lies inside its whole.
        objects: Every object drawn, including those hidden or too small to give a target.
        background_colour: Base RGB colour of the background, channels in [0, 1].
        noise_sigma: Sigma of the per-pixel Gaussian noise.
    """

    image: np.ndarray
    targets: list[SceneTarget]
    objects: list[SceneObject]
    background_colour: tuple[float, float, float]
    noise_sigma: float


# ------------------------------------------------------------------------------------------------ drawing


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only ``(x, y)`` pixel coordinates of a ``size`` x ``size`` image."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@functools.lru_cache(maxsize=32)
def _interpolation_matrix(size: int, cells: int) -> np.ndarray:
    """``size`` x ``cells`` matrix that linearly interpolates ``cells`` values across ``size`` pixels."""
    position = (np.arange(size) + 0.5) / size * (cells - 1)
    lower = np.minimum(np.floor(position).astype(int), cells - 2)
    fraction = position - lower
    matrix = np.zeros((size, cells), dtype=np.float32)
    matrix[np.arange(size), lower] = 1 - fraction
    matrix[np.arange(size), lower + 1] = fraction
    matrix.flags.writeable = False
    return matrix


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [-1, 1]: a ``cells`` x ``cells`` Gaussian grid, bilinearly upsampled."""
    matrix = _interpolation_matrix(size, cells)
    field = matrix @ rng.standard_normal((cells, cells)).astype(np.float32) @ matrix.T
    return field / max(float(np.abs(field).max()), 1e-6)


def _rotated(rng: np.random.Generator, size: int, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates relative to ``centre``, rotated by a random angle."""
    x, y = _pixel_grid(size)
    angle = rng.uniform(0.0, math.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    dx, dy = x - centre[0], y - centre[1]
    return dx * cos + dy * sin, dy * cos - dx * sin


def _texture_field(rng: np.random.Generator, texture: Texture, size: int, scale: float) -> np.ndarray | None:
    """A texture pattern in [-1, 1] over the whole image (None for a flat texture)."""
    if texture is Texture.FLAT:
        return None
    if texture is Texture.NOISE:
        return _smooth_noise(rng, size, int(rng.integers(6, 17)))
    u, v = _rotated(rng, size, (0.0, 0.0))
    if texture is Texture.STRIPES:
        period = rng.uniform(5.0, 16.0) * scale
        return np.sin(u * np.float32(2 * math.pi / period) + np.float32(rng.uniform(0, 2 * math.pi)))
    cell = rng.uniform(4.0, 12.0) * scale
    phases = rng.uniform(0, 2 * math.pi, 2).astype(np.float32)
    wave_u = np.sin(u * np.float32(math.pi / cell) + phases[0])
    wave_v = np.sin(v * np.float32(math.pi / cell) + phases[1])
    return np.where(wave_u * wave_v >= 0, np.float32(1), np.float32(-1))


def _shape_mask(
    rng: np.random.Generator, shape: Shape, centre: tuple[float, float], radius: float, size: int
) -> np.ndarray:
    """Boolean mask of a randomly oriented and proportioned shape of the given radius."""
    u, v = _rotated(rng, size, centre)
    if shape is Shape.RECTANGLE:
        half_width = 0.85 * radius  # about the area of an ellipse of the same radius
        half_height = half_width * rng.uniform(0.5, 1.0)
        return (np.abs(u) <= half_width) & (np.abs(v) <= half_height)
    if shape is Shape.BLOB:
        amplitudes = rng.uniform(0.0, 0.18, _BLOB_HARMONICS.size)
        phases = rng.uniform(0.0, 2 * math.pi, _BLOB_HARMONICS.size)
        angle = np.arctan2(v, u)
        outline = np.full_like(u, radius)
        for harmonic, amplitude, phase in zip(_BLOB_HARMONICS, amplitudes, phases, strict=True):
            outline += np.float32(radius * amplitude) * np.cos(angle * np.float32(harmonic) + np.float32(phase))
        return u * u + v * v <= outline * outline
    minor = radius * rng.uniform(0.8 if shape is Shape.RING else 0.55, 1.0)
    distance = (u / np.float32(radius)) ** 2 + (v / np.float32(minor)) ** 2
    if shape is Shape.RING:
        hole = rng.uniform(0.45, 0.7)
        return (distance <= 1) & (distance >= hole * hole)
    return distance <= 1


def _distinct_colour(rng: np.random.Generator, others: list[np.ndarray], min_distance: float) -> np.ndarray:
    """A uniform random RGB colour at least ``min_distance`` from each of ``others``.

    Rejection sampling always ends: the balls around at most five colours cover less than the unit cube.
    """
    while True:
        candidates = rng.random((32, 3))
        distances = np.linalg.norm(candidates[:, None, :] - np.asarray(others)[None, :, :], axis=2).min(axis=1)
        accepted = np.flatnonzero(distances >= min_distance)
        if accepted.size:
            return candidates[accepted[0]]


def _paint(
    image: np.ndarray, mask: np.ndarray, colour: np.ndarray, texture: np.ndarray | None, amplitude: float
) -> None:
    """Paint ``colour`` plus ``amplitude`` times the texture over ``mask``."""
    values = np.broadcast_to(colour.astype(np.float32), (int(mask.sum()), 3))
    if texture is not None:
        values = values + np.float32(amplitude) * texture[mask][:, None]
    image[mask] = values


def _place(rng: np.random.Generator, owner: np.ndarray, radius: float, first: bool) -> tuple[tuple[float, float], bool]:
    """An object's centre, and whether it was placed against an earlier object."""
    size = owner.shape[0]
    if not first and rng.random() < NEAR_EARLIER_PROBABILITY:
        foreground = np.flatnonzero(owner >= 0)
        if foreground.size:
            row, column = divmod(int(foreground[rng.integers(foreground.size)]), size)
            direction = rng.uniform(0.0, 2 * math.pi)
            x = column + NEAR_SHIFT * radius * math.cos(direction)
            y = row + NEAR_SHIFT * radius * math.sin(direction)
            return (float(np.clip(x, 0, size - 1)), float(np.clip(y, 0, size - 1))), True
    low, high = 0.1 * size, 0.9 * size
    return (float(rng.uniform(low, high)), float(rng.uniform(low, high))), False


def _part_centre(
    rng: np.random.Generator, parent: np.ndarray, centre: tuple[float, float], reach: float
) -> tuple[float, float]:
    """A random pixel of the parent within ``reach`` of its centre (any parent pixel if none is that close)."""
    x, y = _pixel_grid(parent.shape[0])
    inner = parent & ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= reach * reach)
    candidates = np.flatnonzero(inner if inner.any() else parent)
    row, column = divmod(int(candidates[rng.integers(candidates.size)]), parent.shape[0])
    return float(column), float(row)


def make_scene(rng_or_seed: int | np.random.Generator | np.random.SeedSequence, size: int = REFERENCE_SIZE) -> Scene:
    """Draw one synthetic scene with its targets.

    Args:
        rng_or_seed: A seed (the same seed gives the same scene), a ``SeedSequence`` such as
            :func:`scene_seed` gives, or a ``numpy`` generator (whose state advances; use one to draw a stream
            of fresh scenes).
        size: Side of the square image in pixels (at least :data:`MIN_SIZE`).

    Returns:
        The scene.

    Raises:
        InvalidInputError: ``size`` is not a whole number of at least :data:`MIN_SIZE`.
    """
    size = check_int(size, "size", minimum=MIN_SIZE)
    rng = np.random.default_rng(rng_or_seed)
    scale = size / REFERENCE_SIZE

    background = rng.random(3)
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = background.astype(np.float32)
    texture = _texture_field(rng, _TEXTURES[rng.integers(len(_TEXTURES))], size, scale)
    if texture is not None:
        image += np.float32(TEXTURE_AMPLITUDE / 2) * texture[:, :, None]
    for channel in range(3):
        image[:, :, channel] += COLOUR_NOISE_AMPLITUDE * _smooth_noise(rng, size, int(rng.integers(3, 6)))

    owner = np.full((size, size), -1, dtype=np.int8)  # index of the object on top, -1 for background
    in_part = np.zeros((size, size), dtype=bool)  # whether the pixel shows the top object's part
    objects: list[SceneObject] = []
    colours = [background]
    low, high = OBJECT_COUNT_RANGE
    for index in range(int(rng.integers(low, high + 1))):
        shape = _OBJECT_SHAPES[rng.integers(len(_OBJECT_SHAPES))]
        radius = rng.uniform(*RADIUS_RANGE) * scale
        centre, near_earlier = _place(rng, owner, radius, first=index == 0)
        colour = _distinct_colour(rng, colours, OBJECT_COLOUR_DISTANCE)
        colours.append(colour)
        object_texture = _TEXTURES[rng.integers(len(_TEXTURES))]
        mask = _shape_mask(rng, shape, centre, radius, size)
        _paint(image, mask, colour, _texture_field(rng, object_texture, size, scale), TEXTURE_AMPLITUDE)
        owner[mask] = index
        in_part[mask] = False
        part_colour = None
        if shape is not Shape.RING and rng.random() < PART_PROBABILITY and mask.any():
            part_radius = radius * rng.uniform(*PART_RADIUS_RANGE)
            part_shape = _PART_SHAPES[rng.integers(len(_PART_SHAPES))]
            part_centre = _part_centre(rng, mask, centre, radius - part_radius)
            part_colour = _distinct_colour(rng, [colour], PART_COLOUR_DISTANCE)
            part_texture = _texture_field(rng, _TEXTURES[rng.integers(len(_TEXTURES))], size, scale)
            part = _shape_mask(rng, part_shape, part_centre, part_radius, size) & mask
            _paint(image, part, part_colour, part_texture, TEXTURE_AMPLITUDE)
            in_part[part] = True
        objects.append(
            SceneObject(
                shape=shape,
                centre=centre,
                radius=float(radius),
                colour=_colour_tuple(colour),
                texture=object_texture,
                near_earlier=near_earlier,
                part_colour=None if part_colour is None else _colour_tuple(part_colour),
            )
        )

    noise_sigma = float(rng.uniform(*NOISE_SIGMA_RANGE))
    image += np.float32(noise_sigma) * rng.standard_normal(image.shape, dtype=np.float32)
    pixels = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    targets = _visible_targets(owner, in_part, objects, max(1, round(MIN_TARGET_PIXELS * scale * scale)))
    return Scene(pixels, targets, objects, _colour_tuple(background), noise_sigma)


def _colour_tuple(colour: np.ndarray) -> tuple[float, float, float]:
    return float(colour[0]), float(colour[1]), float(colour[2])


def _visible_targets(
    owner: np.ndarray, in_part: np.ndarray, objects: list[SceneObject], min_pixels: int
) -> list[SceneTarget]:
    """The targets of each object's visible region: a whole and its part, or a single, or none when too small."""
    targets = []
    for index, scene_object in enumerate(objects):
        visible = owner == index
        visible_count = int(visible.sum())
        if visible_count < min_pixels:
            continue
        if scene_object.part_colour is not None:
            part = visible & in_part
            part_count = int(part.sum())
            if part_count >= min_pixels and visible_count - part_count >= min_pixels:
                targets.append(SceneTarget(visible, TargetKind.WHOLE, index))
                targets.append(SceneTarget(part, TargetKind.PART, index))
                continue
        targets.append(SceneTarget(visible, TargetKind.SINGLE, index))
    return targets


# ------------------------------------------------------------------------------------------------ datasets


def scene_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The seed of scene ``index`` of the dataset with ``seed``: independent of every other scene.

    Raises:
        InvalidInputError: ``seed`` or ``index`` is not a non-negative whole number.
    """
    seed = check_int(seed, "seed", minimum=0)
    index = check_int(index, "index", minimum=0)
    return np.random.SeedSequence(seed, spawn_key=(index,))


def scene_name(index: int) -> str:
    """The image key of scene ``index`` in a written dataset, e.g. ``"scene_000042"``."""
    return f"scene_{index:06d}"


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    # Level 1 compresses noisy scenes nearly as well as the default and several times faster.
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read {path} ({error}); delete the folder and write the scenes again") from None


def _check_resumable(out: Path, manifest: dict[str, Any]) -> None:
    """Refuse to write into a folder that holds another dataset, so nothing already written is overwritten."""
    manifest_path = out / MANIFEST_FILE
    if not manifest_path.exists():
        for folder in (out / "images", out / "masks"):
            if folder.is_dir() and any(folder.iterdir()):
                raise DatasetError(
                    f"{out} already holds a dataset that the scene generator did not write ({folder} is not "
                    "empty); write the scenes to another folder"
                )
        return
    existing = _read_json(manifest_path)
    settings = ("generator", "version", "seed", "size")
    if not isinstance(existing, dict) or any(existing.get(key) != manifest[key] for key in settings):
        described = ", ".join(f"{key} {existing.get(key)!r}" for key in settings) if isinstance(existing, dict) else ""
        raise DatasetError(
            f"{out} holds other scenes ({described or 'unknown settings'}) than asked for "
            f"(seed {manifest['seed']}, size {manifest['size']}, version {manifest['version']}); write them to "
            "another folder"
        )
    written = existing.get("num_scenes")
    if not isinstance(written, int) or written > manifest["num_scenes"]:
        raise DatasetError(
            f"{out} holds {written} scenes, more than the {manifest['num_scenes']} asked for; ask for at least "
            f"{written} or write them to another folder"
        )


def write_scene_dataset(
    out_dir: str | os.PathLike[str],
    num_scenes: int,
    seed: int,
    size: int = REFERENCE_SIZE,
    *,
    progress: bool = False,
    on_scene: Callable[[int], None] | None = None,
) -> Path:
    """Write ``num_scenes`` scenes as a ``folder`` dataset with a ``labels.json`` of target kinds.

    Every file is written atomically, each scene's image after its masks, so a scene whose image and masks are all
    there is complete: writing again into the same folder (for example after an interruption, or with more scenes)
    skips complete scenes and writes the rest. ``labels.json`` is written last. Read the dataset back with
    ``usam.datasets.open_dataset("folder", out_dir, split)`` and the kinds with :func:`read_scene_labels`.

    Args:
        out_dir: Dataset folder; created if needed.
        num_scenes: Number of scenes (at least 1).
        seed: Dataset seed (non-negative); scene ``i`` is ``make_scene(scene_seed(seed, i), size)``.
        size: Side of the square images in pixels.
        progress: Show a progress bar.
        on_scene: Called with the number of scenes done after each scene (progress of a worker process).

    Returns:
        ``out_dir`` as a path.

    Raises:
        InvalidInputError: An argument is out of range.
        DatasetError: ``out_dir`` holds another dataset (another seed, size or generator version, more scenes
            than asked for, or files the generator did not write).
    """
    from tqdm.auto import tqdm

    num_scenes = check_int(num_scenes, "num_scenes", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    size = check_int(size, "size", minimum=MIN_SIZE)
    out = Path(out_dir)
    manifest = {
        "generator": _GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "num_scenes": num_scenes,
    }
    _check_resumable(out, manifest)
    write_json_atomically(manifest, out / MANIFEST_FILE)
    image_folder = out / "images"
    image_folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    remove_stale_temporaries(image_folder)

    labels: dict[str, str] = {}
    for index in tqdm(range(num_scenes), desc="writing scenes", unit="scene", disable=not progress):
        # Regenerating a complete scene costs a few milliseconds and gives its labels and file names.
        scene = make_scene(scene_seed(seed, index), size)
        key = scene_name(index)
        image_path = image_folder / f"{key}.png"
        mask_folder = out / "masks" / key
        mask_paths = {target.name: mask_folder / f"{target.name}.png" for target in scene.targets}
        if not (image_path.exists() and all(path.exists() for path in mask_paths.values())):
            mask_folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(mask_folder)
            for target in scene.targets:
                write_bytes_atomically(mask_paths[target.name], _png_bytes(target.mask))
            write_bytes_atomically(image_path, _png_bytes(scene.image))
        labels.update({f"{key}/{target.name}": str(target.kind) for target in scene.targets})
        if on_scene is not None:
            on_scene(index + 1)
    write_json_atomically(labels, out / LABELS_FILE)
    return out


def read_scene_labels(root: str | os.PathLike[str]) -> dict[str, TargetKind]:
    """The target kinds of a dataset written by :func:`write_scene_dataset`.

    Args:
        root: The dataset folder.

    Returns:
        ``"<image key>/<object id>"`` (the keys the ``folder`` reader gives) -> kind.

    Raises:
        DatasetError: ``labels.json`` is missing (the write did not finish: run it again) or malformed.
    """
    path = Path(root) / LABELS_FILE
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; write the scenes (again) to finish the dataset")
    labels = _read_json(path)
    if not isinstance(labels, dict):
        raise DatasetError(f"{path} is not a JSON object of target kinds; write the scenes again")
    try:
        return {str(key): TargetKind(value) for key, value in labels.items()}
    except ValueError as error:
        raise DatasetError(f"{path} holds an unknown target kind ({error}); write the scenes again") from None
