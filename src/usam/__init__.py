"""usam: fast, deterministic uncertainty estimates for every mask of Segment Anything 2 (UncertainSAM).

The package root does not import SAM2; :class:`UncertainSAM` reaches it only through :mod:`usam.sam2_adapter`.
"""

from usam.entropy import mask_entropy, pixel_entropy
from usam.errors import (
    CheckpointError,
    DatasetError,
    DownloadError,
    HeadsFileError,
    InvalidInputError,
    StoreError,
    UsamError,
)
from usam.head_table import HEAD_NAMES
from usam.heads import HeadsMetadata, UncertaintyHeads, load_heads, random_heads
from usam.images import as_rgb_uint8, load_image
from usam.models import SAM2_MODELS, get_model_spec
from usam.predictor import UncertainPrediction, UncertainSAM
from usam.version import __version__

__all__ = [
    "HEAD_NAMES",
    "SAM2_MODELS",
    "CheckpointError",
    "DatasetError",
    "DownloadError",
    "HeadsFileError",
    "HeadsMetadata",
    "InvalidInputError",
    "StoreError",
    "UncertainPrediction",
    "UncertainSAM",
    "UncertaintyHeads",
    "UsamError",
    "__version__",
    "as_rgb_uint8",
    "get_model_spec",
    "load_heads",
    "load_image",
    "mask_entropy",
    "pixel_entropy",
    "random_heads",
]
