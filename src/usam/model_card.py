"""Model cards: your own SAM2 variant (a config, Hydra overrides, a checkpoint and the size it plays), as a file.

A model card is a small JSON or YAML file, usually next to its checkpoint::

    {"name": "mysam-large", "config": "configs/sam2.1/sam2.1_hiera_l.yaml", "hydra_overrides": [],
     "checkpoint": "mysam-large.pt", "size": "large", "version": "sam2.1"}

Wherever usam takes a SAM2 model name it takes a card too: a model argument that ends with ``.json``, ``.yaml`` or
``.yml`` is the path of a card (:func:`resolve_model`). The card's ``size`` decides which ``iou_<size>`` head its rows
train and, with its name, which models form the model gap; its ``name`` must therefore end with ``-<size>``, and two
cards pair for the model gap when their names differ only in that suffix (``mysam-tiny``, ``mysam-large``), as
released models pair within a version. ``prompting`` (optional) says how the model must be prompted: absent or
``{"kind": "sparse"}`` for points and boxes alone, like any SAM2; ``{"kind": "click_map", "sigma_px": 4.0,
"amplitude": 5.0, "map_size": 32}`` for a model that also needs each prompt's click map as its mask input
(:mod:`usam.click_map`), which usam then adds to every prompt. ``training`` (optional) is a free record of how the
model was trained (test-bed cards keep their settings and log there); usam does not interpret it.

This module only reads and writes cards (model-agnostic: no SAM2 import); :func:`usam.sam2_adapter.build_sam2_model`
builds the model a card names and reports a config that does not build or a checkpoint that does not fit it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from usam.errors import CheckpointError, InvalidInputError
from usam.files import write_json_atomically, write_text_atomically
from usam.models import SIZES, VERSIONS, SAM2ModelSpec, get_model_spec
from usam.validation import StrEnum, check_choice, check_float, check_int

CARD_SUFFIXES: tuple[str, ...] = (".json", ".yaml", ".yml")
"""A model argument that ends with one of these is the path of a model card, not a model name."""

REQUIRED_KEYS: tuple[str, ...] = ("name", "config", "checkpoint", "size")
OPTIONAL_KEYS: tuple[str, ...] = ("hydra_overrides", "version", "prompting", "training")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class PromptingKind(StrEnum):
    """How a model must be prompted."""

    SPARSE = "sparse"
    CLICK_MAP = "click_map"


@dataclasses.dataclass(frozen=True)
class ClickMapPrompting:
    """A model that needs the click map (:func:`usam.click_map.click_map`) as the mask input of every prompt.

    Attributes:
        sigma_px: Standard deviation of a click's Gaussian, in model-input pixels.
        amplitude: Peak value (a mask logit).
        map_size: Side of the map: SAM2's mask-input size, a quarter of the model's input size.
    """

    sigma_px: float
    amplitude: float
    map_size: int

    def to_dict(self) -> dict[str, Any]:
        """The card's ``prompting`` entry."""
        return {"kind": str(PromptingKind.CLICK_MAP), **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """One SAM2 variant that is not one of Meta's releases.

    Attributes:
        name: The model's name in stores, heads and outputs; ends with ``-<size>``.
        config: A config name inside the sam2 package (``configs/sam2.1/sam2.1_hiera_t.yaml``) or a YAML file.
        checkpoint: The SAM2 checkpoint (``{"model": state_dict}``); relative paths are relative to the card's folder.
        size: The size it plays: ``tiny``, ``small``, ``base-plus`` or ``large``.
        hydra_overrides: Hydra overrides of the config, e.g. ``++model.image_size=512``.
        version: ``sam2`` or ``sam2.1`` when it derives from that release (for the heads' version check), else None.
        prompting: :class:`ClickMapPrompting` for a model that needs the click map, None for points and boxes alone.
        training: A free record of how it was trained (not interpreted), or None.
        source: The card file it was read from, if any (for messages).
    """

    name: str
    config: str
    checkpoint: Path
    size: str
    hydra_overrides: tuple[str, ...] = ()
    version: str | None = None
    prompting: ClickMapPrompting | None = None
    training: dict[str, Any] | None = None
    source: Path | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        where = _where(self.source)
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise InvalidInputError(
                f"{where}'name' must be letters, digits and . _ + - (e.g. mysam-large), got {self.name!r}"
            )
        if self.size not in SIZES:
            raise InvalidInputError(f"{where}'size' must be one of {', '.join(SIZES)}, got {self.size!r}")
        if not self.name.endswith(f"-{self.size}"):
            raise InvalidInputError(
                f"{where}'name' must end with its size, -{self.size} (e.g. {self.name}-{self.size}): stores, heads "
                "and the evaluation read a model's size from its name"
            )
        if _released_name(self.name):
            raise InvalidInputError(
                f"{where}'name' {self.name!r} is the name of a released SAM2 model; give your model its own name"
            )
        if self.version is not None and self.version not in VERSIONS:
            raise InvalidInputError(
                f"{where}'version' must be one of {', '.join(VERSIONS)} or absent, got {self.version!r}"
            )
        if not isinstance(self.config, str) or not self.config.strip():
            raise InvalidInputError(
                f"{where}'config' must name a SAM2 config (e.g. configs/sam2.1/sam2.1_hiera_t.yaml)"
            )
        if not isinstance(self.hydra_overrides, (list, tuple)) or not all(
            isinstance(item, str) for item in self.hydra_overrides
        ):
            raise InvalidInputError(
                f"{where}'hydra_overrides' must be a list of strings such as ++model.image_size=512"
            )
        object.__setattr__(self, "hydra_overrides", tuple(self.hydra_overrides))
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))

    @property
    def config_is_file(self) -> bool:
        """Whether ``config`` is a YAML file of the user's rather than a config inside the sam2 package."""
        return not self.config.startswith("configs/")

    def config_path(self) -> Path:
        """The YAML file of a file config, relative paths resolved against the card's folder."""
        path = Path(self.config).expanduser()
        return path if path.is_absolute() or self.source is None else self.source.parent / path

    def to_dict(self, folder: Path | None = None) -> dict[str, Any]:
        """The card's content; the checkpoint relative to ``folder`` when it lies inside it (the card's own folder)."""
        checkpoint = self.checkpoint
        if folder is not None and checkpoint.is_absolute():
            with contextlib.suppress(ValueError):  # outside the folder: stays absolute
                checkpoint = checkpoint.relative_to(Path(folder).resolve())
        content: dict[str, Any] = {
            "name": self.name,
            "config": self.config,
            "hydra_overrides": list(self.hydra_overrides),
            "checkpoint": checkpoint.as_posix(),
            "size": self.size,
        }
        if self.version is not None:
            content["version"] = self.version
        content["prompting"] = prompting_entry(self.prompting)
        if self.training is not None:
            content["training"] = self.training
        return content

    def identity(self) -> dict[str, Any]:
        """What a store records about the card: its content as written, without the free ``training`` record."""
        content = self.to_dict(self.source.parent if self.source is not None else None)
        content.pop("training", None)
        return content


def prompting_entry(prompting: ClickMapPrompting | None) -> dict[str, Any]:
    """A card's ``prompting`` entry: the click map's, or ``{"kind": "sparse"}`` for points and boxes alone."""
    return {"kind": str(PromptingKind.SPARSE)} if prompting is None else prompting.to_dict()


def card_from_dict(content: Any, folder: Path | None = None, source: Path | None = None) -> ModelCard:
    """A card from its content; a relative checkpoint is resolved against ``folder``.

    Raises:
        InvalidInputError: Missing or unknown keys, or a value of the wrong kind.
    """
    where = _where(source)
    if not isinstance(content, dict):
        raise InvalidInputError(f"{where}a model card is a mapping of {', '.join(REQUIRED_KEYS)} and more")
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing:
        raise InvalidInputError(f"{where}missing key(s) {', '.join(missing)}; a card needs {', '.join(REQUIRED_KEYS)}")
    unknown = sorted(set(content) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise InvalidInputError(
            f"{where}unknown key(s) {', '.join(unknown)}; a card has {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)} "
            "(put free notes under 'training')"
        )
    checkpoint = content["checkpoint"]
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        raise InvalidInputError(f"{where}'checkpoint' must be the path of the SAM2 checkpoint file")
    path = Path(checkpoint).expanduser()
    if not path.is_absolute() and folder is not None:
        path = Path(folder) / path
    training = content.get("training")
    if training is not None and not isinstance(training, dict):
        raise InvalidInputError(f"{where}'training' must be a mapping, got {type(training).__name__}")
    return ModelCard(
        name=content["name"],
        config=content["config"],
        checkpoint=path.resolve() if path.is_absolute() else path,
        size=content["size"],
        hydra_overrides=content.get("hydra_overrides") or (),
        version=content.get("version"),
        prompting=_prompting(content.get("prompting"), where),
        training=training,
        source=source,
    )


def _prompting(value: Any, where: str) -> ClickMapPrompting | None:
    if value is None:
        return None
    if not isinstance(value, dict) or "kind" not in value:
        kinds = ", ".join(PromptingKind.values())
        raise InvalidInputError(f"{where}'prompting' must be a mapping with a 'kind' ({kinds})")
    kind = check_choice(PromptingKind, value["kind"], f"{where}prompting kind")
    expected = {"kind"} if kind is PromptingKind.SPARSE else {"kind", "sigma_px", "amplitude", "map_size"}
    if set(value) != expected:
        raise InvalidInputError(
            f"{where}a {kind} 'prompting' has exactly the keys {', '.join(sorted(expected))}, "
            f"got {', '.join(sorted(map(str, value)))}"
        )
    if kind is PromptingKind.SPARSE:
        return None
    return ClickMapPrompting(
        sigma_px=check_float(value["sigma_px"], f"{where}prompting sigma_px", minimum=0, exclusive_minimum=True),
        amplitude=check_float(value["amplitude"], f"{where}prompting amplitude"),
        map_size=check_int(value["map_size"], f"{where}prompting map_size", minimum=1),
    )


def load_model_card(path: str | Path) -> ModelCard:
    """Read a model card (JSON, or YAML for ``.yaml``/``.yml``) and check it and its checkpoint file.

    Whether the config builds and the checkpoint fits it is checked when the model is built
    (:func:`usam.sam2_adapter.build_sam2_model`).

    Raises:
        InvalidInputError: The file is missing or unreadable, not valid JSON/YAML, or its keys or values are wrong.
        CheckpointError: The checkpoint it names does not exist.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"model card {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"cannot read the model card {path} ({error})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            content = yaml.safe_load(text)
        except yaml.YAMLError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InvalidInputError(f"model card {path} is not valid YAML ({first})") from None
    else:
        try:
            content = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"model card {path} is not valid JSON ({error})") from None
    source = path.resolve()
    card = card_from_dict(content, folder=source.parent, source=source)
    if not card.checkpoint.is_file():
        raise CheckpointError(
            f"model card {path}: its checkpoint {card.checkpoint} does not exist (a relative 'checkpoint' is "
            "relative to the card's folder)"
        )
    return card


def save_model_card(card: ModelCard, path: str | Path) -> Path:
    """Write a card atomically: YAML for ``.yaml``/``.yml``, else JSON.

    A checkpoint inside the card's folder is written relative to it, so the folder can move.
    """
    path = Path(path)
    content = card.to_dict(path.parent)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        return write_text_atomically(path, yaml.safe_dump(content, sort_keys=False))
    return write_json_atomically(content, path)


def is_model_card_path(model: object) -> bool:
    """Whether a model argument names a card file: a path ending with ``.json``, ``.yaml`` or ``.yml``."""
    return isinstance(model, (str, Path)) and str(model).lower().endswith(CARD_SUFFIXES)


def resolve_model(model: str | Path | SAM2ModelSpec | ModelCard) -> SAM2ModelSpec | ModelCard:
    """A model argument as a released model's spec or a card: both have ``name``, ``size`` and ``version``.

    Raises:
        InvalidInputError: An unknown model name, or a bad card (see :func:`load_model_card`).
        CheckpointError: The card's checkpoint does not exist.
    """
    if isinstance(model, (SAM2ModelSpec, ModelCard)):
        return model
    if is_model_card_path(model):
        return load_model_card(model)
    if isinstance(model, Path):
        raise InvalidInputError(f"a model card file ends with {', '.join(CARD_SUFFIXES)}, got {model}")
    return get_model_spec(model)


def _released_name(name: str) -> bool:
    try:
        get_model_spec(name)
    except InvalidInputError:
        return False
    return True


def _where(source: Path | None) -> str:
    return f"model card {source}: " if source is not None else "model card: "
