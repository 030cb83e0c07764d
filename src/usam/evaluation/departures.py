"""How an evaluation run compares with the paper: each deliberate departure, with what this run used.

The departures are :data:`usam.presets.PAPER_DEPARTURES`; what this run used comes from its store, heads and options.

The store's metadata is read for whatever it records (tie rule, extraction precision, SAM2 version, preset, DAVIS
resolution); a store that does not record a choice shows it as not recorded rather than guessing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from usam.head_table import Pairing, SizeTargets, size_targets_of
from usam.heads import HeadsMetadata
from usam.presets import PAPER_DEPARTURES, PRESETS, Preset

NOT_RECORDED = "not recorded"
"""What the comparison shows for a choice that neither the store nor the heads record."""

# Keys under which an extraction may record its choices in the store's metadata, most specific first.
_PRECISION_KEYS = ("extraction_precision", "precision")
_SAM2_VERSION_KEYS = ("sam2_package_version", "sam2_version")


@dataclasses.dataclass(frozen=True)
class RunDeparture:
    """One row of the report's "Differences from the paper".

    Attributes:
        topic: What the choice is about.
        paper: What the authors' code does.
        usam: What usam does by default.
        this_run: What this run used, or :data:`NOT_RECORDED`.
        differs: Whether this run differs from the paper (None when unknown).
        why: Why usam's default differs.
    """

    topic: str
    paper: str
    usam: str
    this_run: str
    differs: bool | None
    why: str

    def to_json(self) -> dict[str, Any]:
        """The row as JSON data."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What an evaluation run knows about its data and heads.

    Attributes:
        sam2_version: SAM2 version of the evaluated rows (``sam2``, ``sam2.1``), or None.
        model_size: SAM2 size of the evaluated rows, or None.
        store_metadata: The store's metadata.
        heads: The heads' metadata.
    """

    sam2_version: str | None
    model_size: str | None
    store_metadata: Mapping[str, Any]
    heads: HeadsMetadata

    def recorded(self, *keys: str) -> str | None:
        """The first of ``keys`` the store's metadata records, as text."""
        return first_recorded(self.store_metadata, keys)

    @property
    def heads_record_training(self) -> bool:
        """Whether the heads file records how the heads were trained (usam's trainer always does)."""
        return bool(self.heads.training)


def has_random_weights(heads: HeadsMetadata) -> bool:
    """Whether a heads file records random weights (``usam.heads.random_heads``) rather than trained ones."""
    return "random initialisation" in str(heads.training.get("source", ""))


def first_recorded(metadata: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    """The value of the first of ``keys`` that ``metadata`` records (not None), as text, or None."""
    return next((str(metadata[key]) for key in keys if metadata.get(key) is not None), None)


def _compared(value: str | None, paper_value: str, words: Callable[[str], str] = str) -> tuple[str, bool | None]:
    if value is None:
        return NOT_RECORDED, None
    return words(value), value.lower() != paper_value.lower()


def _sam2_version(facts: RunFacts) -> tuple[str, bool | None]:
    paper = PRESETS[Preset.PAPER].models[0].rsplit("-", 1)[0]
    return _compared(facts.sam2_version, paper, lambda value: f"{value} models")


def _precision(facts: RunFacts) -> tuple[str, bool | None]:
    return _compared(facts.recorded(*_PRECISION_KEYS), str(PRESETS[Preset.PAPER].extraction_precision))


def _tie_rule(facts: RunFacts) -> tuple[str, bool | None]:
    return _compared(facts.recorded("tie_rule"), str(PRESETS[Preset.PAPER].tie_rule), lambda rule: f"the {rule} one")


def _davis(facts: RunFacts) -> tuple[str, bool | None]:
    dataset = facts.recorded("dataset")
    if dataset is not None and dataset.lower() != "davis":
        return f"not applicable (dataset {dataset})", False
    return _compared(facts.recorded("davis_resolution"), PRESETS[Preset.PAPER].davis_resolution)


def _correlation_model(facts: RunFacts) -> tuple[str, bool | None]:
    return _compared(facts.model_size, PRESETS[Preset.PAPER].evaluation_model)


def _pairing(facts: RunFacts) -> tuple[str, bool | None]:
    return _compared(str(facts.heads.pairing), str(Pairing.AS_RELEASED), lambda value: f"pairing {value!r}")


def _extraction_by_usam(facts: RunFacts) -> tuple[str, bool | None]:
    return "usam's (every store is extracted by usam)", True


def _training_by_usam(facts: RunFacts) -> tuple[str, bool | None]:
    if has_random_weights(facts.heads):
        return "none (the heads have random weights)", None
    if facts.heads_record_training:
        return "usam's (the heads were trained by usam)", True
    return "unknown (the heads file does not record its training)", None


def _size_head_rows(facts: RunFacts) -> tuple[str, bool | None]:
    if has_random_weights(facts.heads) or not facts.heads_record_training:
        return NOT_RECORDED, None
    targets = size_targets_of(facts.heads.training)
    if targets is None:
        return NOT_RECORDED, None
    return f"size heads trained on {targets} rows", targets != SizeTargets.POOLED


_THIS_RUN: dict[str, Callable[[RunFacts], tuple[str, bool | None]]] = {
    "sam2_version": _sam2_version,
    "extraction_precision": _precision,
    "tie_rule": _tie_rule,
    "davis_resolution": _davis,
    "evaluation_model": _correlation_model,
    "size_head_rows": _size_head_rows,
    "pairing": _pairing,
    "validation_split": _training_by_usam,
    "epoch_kept": _training_by_usam,
    "hyper_parameter_search": _training_by_usam,
    "jpeg_augmentation": _extraction_by_usam,
    "coco_size_filter": _extraction_by_usam,
}


def run_departures(facts: RunFacts) -> list[RunDeparture]:
    """Every departure of :data:`usam.presets.PAPER_DEPARTURES` with what this run used."""
    rows = []
    for departure in PAPER_DEPARTURES:
        judge = _THIS_RUN.get(departure.key)
        this_run, differs = judge(facts) if judge else (NOT_RECORDED, None)
        rows.append(RunDeparture(departure.topic, departure.paper, departure.usam, this_run, differs, departure.why))
    return rows


def known_keys() -> set[str]:
    """The departure keys this module can judge for a run."""
    return set(_THIS_RUN)


def recorded_choices(store_metadata: Mapping[str, Any]) -> dict[str, str]:
    """The choices a store's metadata records that the report lists (preset, tie rule, precision, SAM2 version)."""
    facts = {
        "preset": ("preset",),
        "tie rule": ("tie_rule",),
        "extraction precision": _PRECISION_KEYS,
        "SAM2 package": _SAM2_VERSION_KEYS,
        "usam version": ("usam_version",),
    }
    recorded = {label: first_recorded(store_metadata, keys) for label, keys in facts.items()}
    return {label: value for label, value in recorded.items() if value is not None}
