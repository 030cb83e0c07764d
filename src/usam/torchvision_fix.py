"""Make ``import torchvision`` work next to a CPU-only torch, whoever imports it and whenever.

PyPI's torchvision wheels are CUDA builds. Next to a CPU torch their compiled extension fails to register its
operators, and ``import torchvision`` dies with "operator torchvision::nms does not exist" while registering fake
kernels for them. SAM2's image predictor needs only torchvision's transforms, which do not use the extension, so
when (and only when) the plain import fails this way, we declare the two missing operator schemas and import again.
The ``torchvision::nms`` operator then also gets a CPU kernel written in plain torch (:func:`nms_cpu`), so
``torch.ops.torchvision.nms`` works, and :func:`let_box_ops_use_the_nms_kernel` lets ``torchvision.ops.nms`` and
``batched_nms`` (SAM2's automatic mask generator calls the latter) past torchvision's check that its compiled
extension loaded. The rest of ``torchvision.ops`` and ``torchvision.io`` stay unusable.

``import usam`` only installs an import hook (:func:`install_import_hook`, microseconds): torchvision itself is
imported when someone imports it (usam's SAM2 adapter, SAM2, or the user), so ``import usam`` stays fast and the
order of imports does not matter.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import sys
from types import ModuleType
from typing import Any

_MISSING_OPERATORS = ("nms", "qnms")
# Keep the library objects alive: dropping them would unregister the schemas.
_LIBRARIES: list[Any] = []


def _is_missing_operator_error(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and "torchvision::" in str(error)


def nms_cpu(dets: Any, scores: Any, iou_threshold: float) -> Any:
    """Non-maximum suppression as torchvision's CPU kernel computes it, in plain torch.

    Boxes are ``(x1, y1, x2, y2)``; they are visited by decreasing score (a stable sort, so of equal scores the
    earlier box comes first), and a box is dropped when its IoU with a kept box is greater than ``iou_threshold``.

    Args:
        dets: ``(N, 4)`` boxes.
        scores: ``(N,)`` scores.
        iou_threshold: IoU above which the lower-scored box is dropped.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, by decreasing score.

    Example:
        >>> import torch
        >>> boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
        >>> nms_cpu(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
        [0, 2]
    """
    import torch

    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = dets[order]
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=dets.device)
    keep = []
    # O(N) memory per kept box, like torchvision's kernel, rather than an N x N IoU matrix.
    for index in range(len(boxes)):
        if suppressed[index]:
            continue
        keep.append(index)
        width = (torch.minimum(x2[index], x2) - torch.maximum(x1[index], x1)).clamp(min=0)
        height = (torch.minimum(y2[index], y2) - torch.maximum(y1[index], y1)).clamp(min=0)
        intersection = width * height
        iou = intersection / (areas[index] + areas - intersection)
        suppressed |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=dets.device)]


def _declare_missing_operators() -> None:
    import torch

    library = torch.library.Library("torchvision", "FRAGMENT")
    for operator in _MISSING_OPERATORS:
        with contextlib.suppress(RuntimeError):  # already defined by an earlier attempt
            library.define(f"{operator}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    with contextlib.suppress(RuntimeError):  # already registered by an earlier attempt
        library.impl("nms", nms_cpu, "CPU")
    _LIBRARIES.append(library)


def _passes_because_usam_registered_nms() -> None:
    """Stands in for torchvision's extension check in ``torchvision.ops.boxes`` once usam's nms kernel exists."""


def let_box_ops_use_the_nms_kernel() -> bool:
    """Let ``torchvision.ops.nms``/``batched_nms`` run on usam's CPU kernel when torchvision's extension did not load.

    torchvision's ``nms`` first calls ``torchvision.extension._assert_has_ops()``, which fails whenever the compiled
    extension did not load, even though the ``torchvision::nms`` operator it is about to call now has usam's CPU
    kernel. ``torchvision.ops.boxes`` imported that check by name, so its own reference is the narrowest thing to
    replace: only ``nms`` (and ``batched_nms``, which calls it) and ``box_iou`` of rotated boxes read it there. We
    leave ``extension._has_ops`` alone: ``roi_align`` reads it to choose its pure-Python path, which works today.
    ``box_iou`` of rotated boxes then fails on the missing ``box_iou_rotated`` operator instead of the check, as
    before just with torch's message. Applied only by the import fix (the plain import failed) and only while the
    extension is absent.

    Returns:
        Whether the check was replaced: False when torchvision's own extension loaded, when usam registered no
        kernel (the import fix did not apply), or when torchvision's box operations are not imported.
    """
    extension = sys.modules.get("torchvision.extension")
    boxes = sys.modules.get("torchvision.ops.boxes")
    if not _LIBRARIES or extension is None or boxes is None or extension._has_ops():
        return False
    boxes._assert_has_ops = _passes_because_usam_registered_nms
    return True


def _drop_submodules() -> None:
    # A failed import leaves half-initialised submodules behind; they must be imported afresh.
    for name in [name for name in sys.modules if name.startswith("torchvision.")]:
        del sys.modules[name]


class _RetryingLoader(importlib.abc.Loader):
    """Torchvision's own loader, run a second time after the fix if its first run fails on the operators."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        remove_import_hook()
        try:
            self.loader.exec_module(module)
        except RuntimeError as error:
            if not _is_missing_operator_error(error):
                raise
            _drop_submodules()
            _declare_missing_operators()
            self.loader.exec_module(module)
            let_box_ops_use_the_nms_kernel()
        finally:
            # Leave no trace of the hook on the module (importlib.reload uses the real loader).
            module.__loader__ = self.loader
            if module.__spec__ is not None:
                module.__spec__.loader = self.loader


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    """Finds torchvision with the other finders and wraps its loader in :class:`_RetryingLoader` (once)."""

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> Any:
        if fullname != "torchvision":
            return None
        # Stay in place until torchvision really loads: a mere importlib.util.find_spec("torchvision") (transformers
        # asks it to check availability) must not use the hook up before the import that needs it.
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RetryingLoader(spec.loader)
                return spec
        return None  # not installed: the import system reports ModuleNotFoundError as usual


_FINDER = _TorchvisionFinder()


def install_import_hook() -> None:
    """Let the next ``import torchvision`` repair itself if it fails next to a CPU torch; a no-op once imported."""
    if "torchvision" in sys.modules or _FINDER in sys.meta_path:
        return
    sys.meta_path.insert(0, _FINDER)


def remove_import_hook() -> None:
    """Remove the hook (it removes itself when torchvision is imported)."""
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_FINDER)


def ensure_torchvision() -> None:
    """Import torchvision, repaired if needed; nothing happens when it is not installed (SAM2 reports that)."""
    install_import_hook()
    try:
        importlib.import_module("torchvision")
    except ModuleNotFoundError as error:
        if error.name != "torchvision":
            raise
