"""Writing predictions to disk: a JSON record per image (atomically) and its figure."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from usam.predictor import UncertainPrediction


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO run-length encoding (column-major counts, starting with background)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    boundaries = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(boundaries).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def prediction_record(result: UncertainPrediction, **context: Any) -> dict[str, Any]:
    """A JSON-ready description of a single-prompt prediction: one entry per returned mask, plus ``context``."""
    masks = []
    for index in range(result.sam_scores.shape[0]):
        mask = result.masks[index] > 0 if result.masks.dtype != bool else result.masks[index]
        masks.append(
            {
                "index": index,
                "mask_token": int(result.mask_token_index[index]),
                "sam_score": float(result.sam_scores[index]),
                "entropy": float(result.entropy[index]),
                "area": int(np.count_nonzero(mask)),
                "uncertainty": {name: float(values[index]) for name, values in result.uncertainty.items()},
                "segmentation": mask_to_rle(mask),
            }
        )
    return {**context, "image_size": list(result.image_size), "masks": masks}


def write_json_atomically(data: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write JSON next to ``path`` and rename it into place, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
