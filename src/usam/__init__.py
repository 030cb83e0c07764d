"""usam: fast, deterministic uncertainty estimates for every mask of Segment Anything 2 (UncertainSAM).

The package root does not import SAM2; :class:`UncertainSAM` reaches it only through :mod:`usam.sam2_adapter`.
It installs an import hook that repairs ``import torchvision`` next to a CPU-only torch when (and only when) the
plain import fails (see :mod:`usam.torchvision_fix`), so SAM2 imports work before or after ``import usam``.
"""

from usam.automatic import UncertainMaskGenerator
from usam.entropy import mask_entropy, pixel_entropy
from usam.errors import (
    CheckpointError,
    DatasetError,
    DownloadError,
    HeadsFileError,
    InvalidInputError,
    StoreError,
    UsamError,
    UsamWarning,
)
from usam.head_table import HEAD_NAMES
from usam.heads import HeadsMetadata, UncertaintyHeads, load_heads, random_heads
from usam.images import as_rgb_uint8, load_image
from usam.model_card import ModelCard, load_model_card
from usam.models import SAM2_MODELS, get_model_spec
from usam.predictor import UncertainPrediction, UncertainSAM
from usam.torchvision_fix import install_import_hook
from usam.version import __version__
from usam.video import UncertainVideoSAM, VideoFrameResult

install_import_hook()

__all__ = [
    "HEAD_NAMES",
    "SAM2_MODELS",
    "CheckpointError",
    "DatasetError",
    "DownloadError",
    "HeadsFileError",
    "HeadsMetadata",
    "InvalidInputError",
    "ModelCard",
    "StoreError",
    "UncertainMaskGenerator",
    "UncertainPrediction",
    "UncertainSAM",
    "UncertainVideoSAM",
    "UncertaintyHeads",
    "UsamError",
    "UsamWarning",
    "VideoFrameResult",
    "__version__",
    "as_rgb_uint8",
    "get_model_spec",
    "load_heads",
    "load_image",
    "load_model_card",
    "mask_entropy",
    "pixel_entropy",
    "random_heads",
]
