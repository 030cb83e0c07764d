"""Training of the UncertainSAM heads on a token store: all heads at once, vectorised, reproducible.

Modules:

* :mod:`~usam.training.data`: :class:`TrainingData` (feature rows shared by all heads; rows and targets per head)
  and :func:`split_by_image`.
* :mod:`~usam.training.loading`: all of training's store reading: :func:`load_training_data` (which rows and
  targets each head learns from, pooled size heads, dropped non-finite rows), :func:`fill_head_features`,
  :func:`best_mask_token`.
* :mod:`~usam.training.hyper_parameters`: :class:`HyperParameters`, the paper's values (:data:`PAPER_DEFAULTS`),
  its search space (:data:`HPO_SEARCH_SPACE`) and the inference of the defaults from a store's dataset.
* :mod:`~usam.training.recipes`: :class:`Recipe` (``usam``: AdamW, warm-up, cosine, early stopping; ``paper``) and
  :data:`USAM_HYPER_PARAMETERS`.
* :mod:`~usam.training.kernel`: the fused, vectorised SGD or AdamW step of a group of heads.
* :mod:`~usam.training.loop`: :func:`train_heads` (fitting, best epoch by validation loss) and
  :func:`regression_metrics`.
* :mod:`~usam.training.tuning`: :func:`tune_hyper_parameters` (Optuna, one random stream per head).
* :mod:`~usam.training.from_store`: :func:`train_from_store`, the entry point of ``usam train``.
* :mod:`~usam.training.seeds`: the random streams of a run, derived from its seed.

Randomness is derived per head from the seed and the head's name (initial weights, shuffling, search) and per run
for the split, so a head trains to the same weights whichever other heads are trained with it.
"""

from __future__ import annotations

from usam.training.data import DEFAULT_VALIDATION_FRACTION, HeadRows, TrainingData, split_by_image, target_column
from usam.training.from_store import check_output_path, train_from_store
from usam.training.hyper_parameters import (
    DEFAULT_WEIGHT_DECAY,
    HPO_SEARCH_SPACE,
    PAPER_DEFAULTS,
    DatasetDefaults,
    HyperParameters,
    Optimizer,
    defaults_for_datasets,
    paper_hyper_parameters,
)
from usam.training.loading import (
    TrainingWarning,
    best_mask_token,
    fill_head_features,
    load_training_data,
)
from usam.training.loop import regression_metrics, train_heads
from usam.training.recipes import USAM_HYPER_PARAMETERS, Recipe, recipe_hyper_parameters
from usam.training.tuning import tune_hyper_parameters

__all__ = [
    "DEFAULT_VALIDATION_FRACTION",
    "DEFAULT_WEIGHT_DECAY",
    "HPO_SEARCH_SPACE",
    "PAPER_DEFAULTS",
    "USAM_HYPER_PARAMETERS",
    "DatasetDefaults",
    "HeadRows",
    "HyperParameters",
    "Optimizer",
    "Recipe",
    "TrainingData",
    "TrainingWarning",
    "best_mask_token",
    "check_output_path",
    "defaults_for_datasets",
    "fill_head_features",
    "load_training_data",
    "paper_hyper_parameters",
    "recipe_hyper_parameters",
    "regression_metrics",
    "split_by_image",
    "target_column",
    "train_from_store",
    "train_heads",
    "tune_hyper_parameters",
]
