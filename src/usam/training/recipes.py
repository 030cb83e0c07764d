"""How heads are trained by default: :class:`Recipe` (the paper's, or usam's faster one) and its hyper-parameters.

``paper`` is the authors' recipe exactly: SGD with momentum at a constant rate for a fixed number of epochs, the
per-dataset values of :data:`~usam.training.hyper_parameters.PAPER_DEFAULTS`. ``usam`` (the default) is
:data:`USAM_HYPER_PARAMETERS` for every head: AdamW, batches of 1024 rows, one warm-up epoch and a cosine decay over
at most 40 epochs, stopping a head after 4 epochs without a better validation loss (its best epoch is kept, as in
every recipe). ``benchmarks/train_speed.py --store`` measures the time each takes to reach the paper's best
validation loss.
"""

from __future__ import annotations

from collections.abc import Sequence

from usam.training.hyper_parameters import HyperParameters, Optimizer, paper_hyper_parameters
from usam.validation import StrEnum, check_choice


class Recipe(StrEnum):
    """How heads are trained."""

    USAM = "usam"
    """AdamW, large batches, warm-up and cosine decay, early stopping (:data:`USAM_HYPER_PARAMETERS`)."""
    PAPER = "paper"
    """The paper's SGD with its per-dataset values (:data:`usam.training.PAPER_DEFAULTS`)."""


USAM_HYPER_PARAMETERS = HyperParameters(
    lr=1e-3,
    epochs=40,
    batch_size=1024,
    momentum=0.0,
    weight_decay=1e-2,
    optimizer=Optimizer.ADAMW,
    warmup_epochs=1,
    cosine=True,
    patience=4,
)
"""usam's recipe for every head: AdamW (lr 1e-3, torch's default weight decay 1e-2), 1024 rows a step, 1 warm-up
epoch, cosine decay to 0 at epoch 40, early stopping after 4 epochs without a better validation loss."""


def recipe_hyper_parameters(recipe: Recipe | str, dataset: str, heads: Sequence[str]) -> dict[str, HyperParameters]:
    """Each head's hyper-parameters under a recipe.

    Args:
        recipe: ``"usam"`` or ``"paper"``.
        dataset: Whose paper values the ``paper`` recipe uses (see :func:`~usam.training.paper_hyper_parameters`).
        heads: Head names.

    Returns:
        Hyper-parameters per head.

    Raises:
        InvalidInputError: If the recipe, the dataset (``paper``) or a head name is unknown.
    """
    recipe = check_choice(Recipe, recipe, "recipe")
    if recipe == Recipe.PAPER:
        return paper_hyper_parameters(dataset, heads)
    from usam.training.data import check_head_names

    return dict.fromkeys(check_head_names(heads), USAM_HYPER_PARAMETERS)
