"""What identifies the inputs of an extraction: the weights of each model and the data, for the store's metadata.

A store must hold rows of one set of weights and one dataset selection. Resuming into a store with another
checkpoint or another dataset root would silently mix rows, so the extraction records these identities in the
store file and the store writer refuses a run whose identities differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from usam import sam2_adapter
from usam.datasets import DatasetReader
from usam.errors import CheckpointError
from usam.predictor import UncertainSAM

_HASH_CHUNK_BYTES = 1 << 20


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (checkpoints are up to a gigabyte).

    Raises:
        CheckpointError: If the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while chunk := file.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as error:
        raise CheckpointError(f"cannot read the checkpoint {path} to record its checksum: {error}") from error
    return digest.hexdigest()


def weights_identity(model: UncertainSAM) -> dict[str, Any] | None:
    """What identifies a model's weights, or None for a model that usam did not build (it cannot be identified).

    Returns:
        ``{"config", "hydra_overrides", "random_weights_seed", "checkpoint_sha256"}``: the SAM2 config, the extra
        Hydra overrides, and the checkpoint's SHA-256 or, for random weights, their seed.
    """
    record = sam2_adapter.weights_record_of(model.predictor)
    if record is None:
        return None
    checkpoint = record.pop("checkpoint")
    record["checkpoint_sha256"] = None if checkpoint is None else file_sha256(checkpoint)
    return record


def data_identity(reader: DatasetReader) -> dict[str, Any]:
    """What identifies the data: dataset, split, resolved root and the selection options (and DAVIS's resolution)."""
    identity = {
        "dataset": reader.name,
        "split": reader.split,
        "root": str(Path(reader.root).resolve()),
        "every": reader.every,
        "start": reader.start,
        "stop": reader.stop,
        "limit": reader.limit,
    }
    resolution = getattr(reader, "resolution", None)
    if resolution is not None:
        identity["resolution"] = resolution
    return identity


def extraction_identity(reader: DatasetReader, models: Mapping[str, UncertainSAM]) -> dict[str, Any]:
    """The identity recorded in a store: ``{"data": ..., "weights": {model name: ...}}``."""
    return {"data": data_identity(reader), "weights": {name: weights_identity(model) for name, model in models.items()}}
