"""Shared fixtures: small SAM2 models with random weights (built from the configs inside the sam2 package)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

from usam import sam2_adapter
from usam.head_table import HEAD_NAMES

SMALL_IMAGE_SIZE = 128


def build_small_sam2(model: str = "sam2.1-tiny", seed: int = 0, image_size: int = SMALL_IMAGE_SIZE):
    """A SAM2 of the given config with random weights, shrunk so a forward pass takes milliseconds."""
    return sam2_adapter.build_sam2_model(
        model,
        device="cpu",
        random_weights=True,
        seed=seed,
        hydra_overrides=sam2_adapter.small_model_overrides(image_size),
    )


@pytest.fixture(scope="session")
def small_sam2():
    return build_small_sam2()


@pytest.fixture
def predictor(small_sam2):
    return sam2_adapter.make_image_predictor(small_sam2)


@pytest.fixture
def rgb_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = (rng.random((96, 120, 3)) * 255).astype(np.uint8)
    image[30:70, 40:90] = (200, 40, 40)  # an object-like block so masks are not all noise
    return image


def write_authors_heads(folder, names=HEAD_NAMES, seed: int = 0, token_dim: int = 256) -> dict[str, dict]:
    """Write heads in the paper authors' layout (<name>/model.pth state dicts); returns the state dicts."""
    generator = torch.Generator().manual_seed(seed)
    states = {}
    for name in names:
        state = {
            "layers.0.weight": torch.randn(512, 2 * token_dim, generator=generator) * 0.05,
            "layers.0.bias": torch.randn(512, generator=generator) * 0.05,
            "layers.1.weight": torch.randn(512, 512, generator=generator) * 0.05,
            "layers.1.bias": torch.randn(512, generator=generator) * 0.05,
            "layers.2.weight": torch.randn(1, 512, generator=generator) * 0.5,
            "layers.2.bias": torch.randn(1, generator=generator) * 0.5,
        }
        (folder / name).mkdir(parents=True, exist_ok=True)
        torch.save(state, folder / name / "model.pth")
        states[name] = state
    return states


def reference_head(state: dict, features: np.ndarray, gap: bool) -> np.ndarray:
    """The authors' MLP written out in float64 numpy: an independent recomputation of one head."""
    weights = {key: value.double().numpy() for key, value in state.items()}
    hidden = np.maximum(features @ weights["layers.0.weight"].T + weights["layers.0.bias"], 0)
    hidden = np.maximum(hidden @ weights["layers.1.weight"].T + weights["layers.1.bias"], 0)
    logits = hidden @ weights["layers.2.weight"].T + weights["layers.2.bias"]
    value = 1.0 / (1.0 + np.exp(-logits[..., 0]))
    return value - 0.5 if gap else value


def write_folder_dataset(root, num_images=3, size=(48, 64), seed=0):
    """A dataset in usam's plain folder layout: random images with two rectangular objects each."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    for index in range(num_images):
        image = (rng.random((*size, 3)) * 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"img{index:02d}.png")
        masks = root / "masks" / f"img{index:02d}"
        masks.mkdir(parents=True)
        for object_index in range(2):
            mask = np.zeros(size, np.uint8)
            top, left = rng.integers(0, size[0] - 15), rng.integers(0, size[1] - 15)
            mask[top : top + 12 + object_index * 3, left : left + 14] = 255
            Image.fromarray(mask).save(masks / f"obj{object_index}.png")
    return root


TWO_SIZES = ("sam2.1-tiny", "sam2.1-large")
"""A small and a large config: enough for the model gap."""

SMALL_OVERRIDE_ARGS = [f"--hydra-override={override}" for override in sam2_adapter.small_model_overrides(128)]
"""The CLI arguments that build the same small models as :func:`build_small_sam2`."""


@pytest.fixture(scope="session")
def two_size_sam2():
    """Small random-weight SAM2 models of :data:`TWO_SIZES`, seeded by their index."""
    return {name: build_small_sam2(name, seed=index) for index, name in enumerate(TWO_SIZES)}


def wrap_models(sam_models):
    """``UncertainSAM`` wrappers (no heads) around SAM2 models, by name."""
    from usam.predictor import UncertainSAM

    return {name: UncertainSAM(sam2_adapter.make_image_predictor(model)) for name, model in sam_models.items()}


TIED_MASK_IOUS = (0.9, 0.9, 0.2)
"""``mask_ious`` of every row of :func:`write_tied_store`: outputs 0 and 1 are tied for the best."""


def write_tied_store(root, *, metadata=None, token_dim=256, num_mask_tokens=4, models=("sam2.1-tiny",), images=4):
    """A token store whose rows all have two equally good masks (:data:`TIED_MASK_IOUS`).

    Every value of mask token j is ``j + 1`` and every value of the IoU token is -1, so a feature row tells which
    token it was built from. ``metadata`` is recorded as the store's options (e.g. ``{"tie_rule": "last"}``).
    """
    import pyarrow as pa

    from usam.store import StoreWriter, row_schema

    schema = row_schema(token_dim=token_dim, num_mask_tokens=num_mask_tokens)
    with StoreWriter(root, metadata=metadata or {}, token_dim=token_dim, num_mask_tokens=num_mask_tokens) as writer:
        for image in range(images):
            key = f"img{image:03d}"
            rows = []
            for model in models:
                strings = {"image_key": key, "object_id": "o0", "model": model, "dataset": "coco", "split": "val"}
                row = {}
                for field in schema:
                    if pa.types.is_string(field.type):
                        row[field.name] = strings[field.name]
                    elif pa.types.is_fixed_size_list(field.type):
                        row[field.name] = np.zeros(field.type.list_size, np.float32)
                    elif pa.types.is_integer(field.type):
                        row[field.name] = 64
                    else:
                        row[field.name] = 0.25
                row["iou_token"] = np.full(token_dim, -1.0, np.float32)
                row["mask_tokens"] = np.repeat(np.arange(1.0, num_mask_tokens + 1.0), token_dim).astype(np.float32)
                row["mask_ious"] = np.array(TIED_MASK_IOUS, np.float32)
                row["iou"] = max(TIED_MASK_IOUS)
                rows.append(row)
            writer.add_image(key, rows)
    return root


def run_cli(argv, capsys):
    """Run ``usam`` in-process: (exit status, stdout, stderr)."""
    from usam.cli import main

    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="session")
def two_size_checkpoint_dir(tmp_path_factory, two_size_sam2):
    """The :func:`two_size_sam2` models saved as checkpoints under their official file names."""
    import torch

    from usam.models import get_model_spec

    folder = tmp_path_factory.mktemp("checkpoints")
    for name, model in two_size_sam2.items():
        torch.save({"model": model.state_dict()}, folder / get_model_spec(name).checkpoint_name)
    return folder


def write_jpeg_video(folder, num_frames: int = 3, size=(96, 120), seed: int = 0):
    """A video as SAM2 reads one: ``00000.jpg``, ... with a red block that moves right and a fixed green square."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(num_frames):
        frame = (rng.random((*size, 3)) * 60).astype(np.uint8)
        frame[30:70, 40 + 5 * index : 90 + 5 * index] = (200, 40, 40)
        frame[10:30, 10:30] = (40, 200, 40)
        Image.fromarray(frame).save(folder / f"{index:05d}.jpg", quality=95)
    return folder


def build_small_video_predictor(model: str = "sam2.1-tiny", seed: int = 0, image_size: int = SMALL_IMAGE_SIZE):
    """A ``SAM2VideoPredictor`` with the random weights and small sizes of :func:`build_small_sam2`."""
    from usam.sam2_adapter.video import build_video_predictor

    return build_video_predictor(
        model,
        device="cpu",
        random_weights=True,
        seed=seed,
        hydra_overrides=sam2_adapter.small_model_overrides(image_size),
    )


IOU_STORE_HEADS = ["iou_tiny", "iou_unsupervised", "iou_dense_prompt"]
"""The IoU heads with targets in :func:`write_iou_store`'s rows."""


@contextlib.contextmanager
def benchmark_module(name):
    """Import ``benchmarks/<name>.py`` as a module for the duration of the block."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up in sys.modules while the script runs its definitions.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def random_row(rng, signal_rng=None):
    """Every column of a store row, random: vectors standard normal, integers 64, floats uniform in [0, 1).

    With ``signal_rng`` the scalar-signal columns draw from it, so adding them left the other columns' draws as they
    were.
    """
    import pyarrow as pa

    from usam.store import row_schema
    from usam.store.schema import SIGNAL_COLUMNS

    row = {}
    for field in row_schema():
        size = field.type.list_size if pa.types.is_fixed_size_list(field.type) else None
        if signal_rng is not None and field.name in SIGNAL_COLUMNS:
            row[field.name] = signal_rng.random(size).astype(np.float32) if size else float(signal_rng.random())
        elif size:
            row[field.name] = rng.standard_normal(size).astype(np.float32)
        elif pa.types.is_integer(field.type):
            row[field.name] = 64
        elif pa.types.is_floating(field.type):
            row[field.name] = float(rng.random())
    return row


def write_iou_store(root, seed, images=120, objects=2):
    """Rows of sam2.1-tiny with random tokens and true IoUs around 0.8 (random heads predict far from it)."""
    from usam.store import StoreWriter

    rng = np.random.default_rng(seed)
    # The signal columns (schema 2) draw from their own generator, so the other columns' draws stay as they were.
    signal_rng = np.random.default_rng(seed + 1000)
    with StoreWriter(root, rows_per_part=100) as writer:
        for image in range(images):
            rows = []
            for obj in range(objects):
                row = random_row(rng, signal_rng)
                iou = float(np.clip(0.8 + rng.normal(0, 0.1), 0, 1))
                row.update(image_key=f"img{image:04d}", object_id=f"o{obj}", model="sam2.1-tiny", dataset="coco",
                           split="val", mask_ious=np.array([iou, iou / 2, iou / 3], np.float32), iou=iou,
                           unsupervised_iou=iou * 0.9, iou_dense_prompt=min(iou + 0.05, 1.0))  # fmt: skip
                rows.append(row)
            writer.add_image(f"img{image:04d}", rows)
    return root
