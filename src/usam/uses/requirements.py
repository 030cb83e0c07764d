"""Which heads a use needs, and the one-line errors that name the missing ones.

Every use reads its estimates from an :class:`usam.UncertainSAM`'s heads; a use that cannot work with the loaded
heads fails before any image is encoded, naming the heads it needs and the ones it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from usam.errors import HeadsFileError
from usam.head_table import HEADS, SIZE_HEADS, HeadKind, size_head_name
from usam.models import size_and_family


def loaded_heads(model: Any) -> list[str]:
    """The head names an :class:`usam.UncertainSAM` (or anything with ``heads``) has loaded; empty without heads."""
    heads = getattr(model, "heads", None)
    return list(heads.names) if heads is not None else []


def require_heads(model: Any, needed: Sequence[str], purpose: str) -> None:
    """Fail unless ``model`` has loaded every head in ``needed``.

    Args:
        model: An :class:`usam.UncertainSAM`.
        needed: Head names the use reads.
        purpose: What needs them, for the message (e.g. ``"a cascade that escalates by model gap"``).

    Raises:
        HeadsFileError: Naming the missing heads and the loaded ones.
    """
    have = loaded_heads(model)
    missing = [name for name in needed if name not in have]
    if missing:
        loaded = ", ".join(have) if have else "no heads"
        raise HeadsFileError(
            f"{purpose} needs the head(s) {', '.join(missing)}, but the heads loaded have {loaded}; "
            "use a heads file trained with them"
        )


def own_iou_head(model: Any, purpose: str) -> str:
    """The IoU head that predicts the IoU of ``model``'s own masks: the ``iou_<size>`` head of its SAM2 size.

    A model usam did not build (no name) uses the only size head of its heads, if there is exactly one.

    Args:
        model: An :class:`usam.UncertainSAM`.
        purpose: What needs the head, for the message.

    Raises:
        HeadsFileError: The model's size head is not loaded (or, for a model of unknown size, not exactly one size
            head is).

    Example:
        >>> from usam.heads import random_heads
        >>> class Wrapped:
        ...     model_name, heads = "sam2.1-large", random_heads(["iou_large", "model_gap"])
        >>> own_iou_head(Wrapped(), "a test")
        'iou_large'
    """
    name = getattr(model, "model_name", None)
    size = size_and_family(name)[0] if name else None
    if size is not None:
        head = size_head_name(size)
        require_heads(model, [head], f"{purpose} on {name}")
        return head
    size_heads = [head for head in loaded_heads(model) if head in SIZE_HEADS]
    if len(size_heads) != 1:
        raise HeadsFileError(
            f"{purpose} needs the IoU head of the model's size, but the model's size is unknown and the heads loaded "
            f"have {len(size_heads)} size heads ({', '.join(size_heads) or 'none'}); name the head to use"
        )
    return size_heads[0]


def check_iou_head(model: Any, head: str, purpose: str) -> str:
    """``head`` if it is a loaded IoU head of ``model`` (as given by a caller), else a one-line error.

    Raises:
        HeadsFileError: ``head`` is not an IoU head or is not loaded.
    """
    if head not in HEADS or HEADS[head].kind is not HeadKind.IOU:
        iou_heads = [name for name, spec in HEADS.items() if spec.kind is HeadKind.IOU]
        raise HeadsFileError(f"{purpose} needs an IoU head ({', '.join(iou_heads)}), got {head!r}")
    require_heads(model, [head], purpose)
    return head
