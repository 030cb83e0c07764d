"""Make ``import torchvision`` work next to a CPU-only torch, whoever imports it and whenever.

PyPI's torchvision wheels are CUDA builds. Next to a CPU torch their compiled extension fails to register its
operators, and ``import torchvision`` dies with "operator torchvision::nms does not exist" while registering fake
kernels for them. SAM2's image predictor needs only torchvision's transforms, which do not use the extension, so
when (and only when) the plain import fails this way, we declare the two missing operator schemas and import again.
``torchvision.ops`` and ``torchvision.io`` stay unusable then; nothing in usam or SAM2's image predictor uses them.

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


def _declare_missing_operators() -> None:
    import torch

    library = torch.library.Library("torchvision", "FRAGMENT")
    for operator in _MISSING_OPERATORS:
        with contextlib.suppress(RuntimeError):  # already defined by an earlier attempt
            library.define(f"{operator}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARIES.append(library)


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
        try:
            self.loader.exec_module(module)
        except RuntimeError as error:
            if not _is_missing_operator_error(error):
                raise
            _drop_submodules()
            _declare_missing_operators()
            self.loader.exec_module(module)
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
        remove_import_hook()
        for finder in list(sys.meta_path):
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
