"""The released SAM2 models by name: configs inside the ``sam2`` package, checkpoint files and URLs.

Names are ``<version>-<size>``: versions ``sam2`` and ``sam2.1``, sizes ``tiny``, ``small``, ``base-plus`` and
``large`` (for example ``sam2.1-tiny``). Hugging Face ids (``facebook/sam2.1-hiera-tiny``), checkpoint file names
(``sam2.1_hiera_tiny.pt``) and config names (``sam2.1_hiera_t``) are accepted too.
"""

from __future__ import annotations

import dataclasses

from usam.errors import InvalidInputError

SIZES: tuple[str, ...] = ("tiny", "small", "base-plus", "large")
VERSIONS: tuple[str, ...] = ("sam2", "sam2.1")
_SIZE_CONFIG_SUFFIX = {"tiny": "t", "small": "s", "base-plus": "b+", "large": "l"}
_CHECKPOINT_URL_FOLDER = {
    "sam2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824",
    "sam2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824",
}


@dataclasses.dataclass(frozen=True)
class SAM2ModelSpec:
    """One released SAM2 model.

    Attributes:
        name: Our name, e.g. ``sam2.1-tiny``.
        version: ``sam2`` or ``sam2.1``.
        size: ``tiny``, ``small``, ``base-plus`` or ``large``.
        config: Hydra config name inside the ``sam2`` package, as ``build_sam2`` expects it.
        checkpoint_name: Official checkpoint file name, e.g. ``sam2.1_hiera_tiny.pt``.
        url: Official download URL of the checkpoint.
        hf_id: Hugging Face model id naming the same weights.
    """

    name: str
    version: str
    size: str
    config: str
    checkpoint_name: str
    url: str
    hf_id: str

    @property
    def head_name(self) -> str:
        """The IoU head trained for this size, e.g. ``iou_base_plus``."""
        from usam.head_table import size_head_name  # the head table imports this module's SIZES

        return size_head_name(self.size)


def _make_spec(version: str, size: str) -> SAM2ModelSpec:
    stem = f"{version}_hiera_{size.replace('-', '_')}"
    config_stem = f"{version}_hiera_{_SIZE_CONFIG_SUFFIX[size]}"
    return SAM2ModelSpec(
        name=f"{version}-{size}",
        version=version,
        size=size,
        config=f"configs/{version}/{config_stem}.yaml",
        checkpoint_name=f"{stem}.pt",
        url=f"{_CHECKPOINT_URL_FOLDER[version]}/{stem}.pt",
        hf_id=f"facebook/{version}-hiera-{size}",
    )


SAM2_MODELS: dict[str, SAM2ModelSpec] = {
    spec.name: spec for spec in (_make_spec(version, size) for version in VERSIONS for size in SIZES)
}
"""All released SAM2 models, keyed by name."""

DEFAULT_MODELS: tuple[str, ...] = tuple(f"sam2.1-{size}" for size in SIZES)


def _aliases(spec: SAM2ModelSpec) -> set[str]:
    size_words = {
        spec.size,
        spec.size.replace("-", "_"),
        spec.size.replace("-", ""),
        _SIZE_CONFIG_SUFFIX[spec.size],
    }
    names = {spec.name, spec.hf_id, spec.checkpoint_name, spec.checkpoint_name.removesuffix(".pt")}
    names.add(spec.config.rsplit("/", 1)[-1].removesuffix(".yaml"))
    names.update(f"{spec.version}-{word}" for word in size_words)
    names.update(f"{spec.version}_{word}" for word in size_words)
    if spec.version == "sam2":
        names.update(f"sam2.0-{word}" for word in size_words)
    return {name.lower() for name in names}


_ALIASES = {alias: spec for spec in SAM2_MODELS.values() for alias in _aliases(spec)}


def get_model_spec(name: str) -> SAM2ModelSpec:
    """Look a released SAM2 model up by any of its names.

    Raises:
        InvalidInputError: The name is not a released model; the message lists the known ones.
    """
    spec = _ALIASES.get(name.strip().lower())
    if spec is None:
        raise InvalidInputError(f"unknown SAM2 model {name!r}; known models: {', '.join(SAM2_MODELS)}")
    return spec


def size_and_family(name: str) -> tuple[str | None, str | None]:
    """The size of a model name and the family it belongs to: a release's version, else the name before ``-<size>``.

    Models of one family pair for the model gap (tiny against large). A model card's name ends with its size
    (:mod:`usam.model_card`), so ``mysam-tiny`` and ``mysam-large`` form a family, as ``sam2.1-tiny`` and
    ``sam2.1-large`` do.

    Example:
        >>> size_and_family("sam2.1-base-plus"), size_and_family("my-sam-large"), size_and_family("x")
        (('base-plus', 'sam2.1'), ('large', 'my-sam'), (None, None))
    """
    try:
        spec = get_model_spec(name)
    except InvalidInputError:
        # Sizes are tested longest first, so that "...-base-plus" is not mistaken for something shorter.
        for size in sorted(SIZES, key=len, reverse=True):
            if name.endswith("-" + size):
                return size, name[: -len(size) - 1]
        return None, None
    return spec.size, spec.version
