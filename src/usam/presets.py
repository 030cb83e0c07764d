"""Named sets of choices: usam's defaults, and ``paper`` for reproducing UncertainSAM's published numbers.

The commands that take ``--preset`` (``extract``, ``train``, ``evaluate``) read their preset-dependent defaults from
:data:`PRESETS`; an option given explicitly always wins. :data:`PAPER_DEPARTURES` lists, in one place, every
deliberate difference between usam's defaults and the paper authors' code; the README's table and the evaluation
report are written from it.
"""

from __future__ import annotations

import dataclasses

from usam.devices import Precision
from usam.models import SIZES
from usam.validation import StrEnum


class TieRule(StrEnum):
    """Which of several multimask outputs with the same IoU counts as "the best"."""

    FIRST = "first"
    """The first of the tied outputs (numpy's ``argmax``; usam's default)."""
    LAST = "last"
    """The last of the tied outputs, as the authors' code picks it."""


class Preset(StrEnum):
    """A named set of defaults."""

    USAM = "usam"
    """usam's own choices (see :data:`PAPER_DEPARTURES` for where and why they differ from the paper)."""
    PAPER = "paper"
    """What reproducing the paper needs: SAM 2.0 models, float32 extraction, the authors' tie rule, DAVIS at full
    resolution, the Large model for the correlation table."""


@dataclasses.dataclass(frozen=True)
class PresetChoices:
    """The defaults a preset sets.

    Attributes:
        models: SAM2 models ``usam extract`` runs.
        extraction_precision: Number type of SAM2 during extraction on a GPU (CPUs always run float32).
        tie_rule: Which tied output is the best one, for targets, entropies and the heads' training token.
        davis_resolution: DAVIS frames read by ``usam extract --dataset davis``.
        evaluation_model: SAM2 size ``usam evaluate`` reports (the paper's correlation table uses Large).
    """

    models: tuple[str, ...]
    extraction_precision: Precision
    tie_rule: TieRule
    davis_resolution: str
    evaluation_model: str


PRESETS: dict[Preset, PresetChoices] = {
    Preset.USAM: PresetChoices(
        models=tuple(f"sam2.1-{size}" for size in SIZES),
        extraction_precision=Precision.BFLOAT16,
        tie_rule=TieRule.FIRST,
        davis_resolution="480p",
        evaluation_model="tiny",
    ),
    Preset.PAPER: PresetChoices(
        models=tuple(f"sam2-{size}" for size in SIZES),
        extraction_precision=Precision.FLOAT32,
        tie_rule=TieRule.LAST,
        davis_resolution="Full-Resolution",
        evaluation_model="large",
    ),
}


@dataclasses.dataclass(frozen=True)
class Departure:
    """One deliberate difference between usam and the paper authors' code.

    Attributes:
        key: Identifier of the choice (stable; reports and code refer to it).
        topic: What the choice is about.
        usam: What usam does by default.
        paper: What the authors' code does.
        why: Why usam differs.
        preset_paper: Whether ``--preset paper`` switches to the authors' behaviour.
    """

    key: str
    topic: str
    usam: str
    paper: str
    why: str
    preset_paper: bool


PAPER_DEPARTURES: tuple[Departure, ...] = (
    Departure(
        "sam2_version",
        "SAM2 version of the data",
        "SAM 2.1 models",
        "SAM 2.0 models",
        "SAM 2.1 is Meta's current release; the authors' released sam2.1 heads exist too",
        True,
    ),
    Departure(
        "extraction_precision",
        "extraction precision on a GPU",
        "bfloat16 autocast, as SAM2's own demos run",
        "float32",
        "about twice as fast on recent GPUs; a CPU extracts in float32 unless told otherwise",
        True,
    ),
    Departure(
        "tie_rule",
        "ties between equally good masks",
        "the first of the tied masks",
        "the last of the tied masks",
        "numpy's argmax convention; ties are rare except for empty masks (IoU 0)",
        True,
    ),
    Departure(
        "davis_resolution",
        "DAVIS frames",
        "480p",
        "Full-Resolution",
        "480p is the standard DAVIS 2017 trainval download",
        True,
    ),
    Departure(
        "evaluation_model",
        "model of the correlation table",
        "the model given with --model (default tiny)",
        "Large",
        "the table is reported for any size",
        True,
    ),
    Departure(
        "size_head_rows",
        "training rows of the iou_<size> heads",
        "the rows of that size's model, with their own IoU",
        "every row (the tokens of every model), with that size's IoU of the same object",
        "a head then sees only the tokens it is applied to; --pool-sizes gives the paper's targets",
        True,
    ),
    Departure(
        "pairing",
        "token pairing of usam-trained heads",
        "returned mask k is scored with mask token k + 1, the token that produced it",
        "mask token k (one token too early for multimask outputs)",
        "the true pairing; the authors' released heads still load with their own pairing",
        False,
    ),
    Departure(
        "validation_split",
        "validation split",
        "by image, seeded, rows shuffled every epoch",
        "a split of the stored rows (not by image), rows never shuffled",
        "rows of one image in both splits would leak the image into validation",
        False,
    ),
    Departure(
        "epoch_kept",
        "epoch kept",
        "the epoch with the best validation loss",
        "the last epoch",
        "the last epoch can be past the best one",
        False,
    ),
    Departure(
        "hyper_parameter_search",
        "hyper-parameter search",
        "Optuna's TPE sampler, learning rate log-uniform over the paper's range, one seeded stream per head",
        "SMAC, learning rate uniform over the same range",
        "Optuna is a lighter dependency; a uniform draw over 1e-4..0.1 almost never tries small rates",
        False,
    ),
    Departure(
        "jpeg_augmentation",
        "JPEG augmentation",
        "PIL JPEG encoding of the RGB image",
        "OpenCV encoding of the RGB array as if it were BGR",
        "the authors' channel order swaps red and blue before compression",
        False,
    ),
    Departure(
        "coco_size_filter",
        "COCO object size filter",
        "at least 10 pixels in the decoded mask",
        "a size filter that does not count the decoded mask's pixels",
        "the decoded mask is what the prompts are drawn from",
        False,
    ),
)
"""Every deliberate difference from the paper authors' code, for the README and the evaluation report."""


def departures_markdown() -> str:
    """:data:`PAPER_DEPARTURES` as a Markdown table (the README's table is this text).

    Example:
        >>> print(departures_markdown().splitlines()[0])
        | choice | usam | the paper's code | why | `--preset paper` |
    """
    lines = [
        "| choice | usam | the paper's code | why | `--preset paper` |",
        "|---|---|---|---|---|",
    ]
    for departure in PAPER_DEPARTURES:
        switched = "switches to the paper's" if departure.preset_paper else "keeps usam's"
        lines.append(f"| {departure.topic} | {departure.usam} | {departure.paper} | {departure.why} | {switched} |")
    return "\n".join(lines)
