"""Which torch device to run on (model-agnostic)."""

from __future__ import annotations

import torch

from usam.errors import InvalidInputError
from usam.validation import StrEnum


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when available, else the CPU.

    Raises:
        InvalidInputError: If the name is not a torch device, or names a CUDA or MPS device this machine lacks.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"{device!r} is not a torch device; use e.g. cpu, cuda or cuda:1") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device} asked for, but torch sees no CUDA GPU here; use --device cpu")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise InvalidInputError(f"device {device} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"device {device} asked for, but MPS is not available here; use --device cpu")
    return chosen


def has_fast_bfloat16(device: str | torch.device) -> bool:
    """Whether bfloat16 matrix products are native on ``device``.

    True for a CUDA GPU that supports them, or a CPU with AVX-512 BF16 or AMX BF16 instructions (read from
    ``/proc/cpuinfo``; False where it cannot be read).

    Where bfloat16 is emulated, mixed precision gains little or nothing over float32, so callers that choose the
    precision for speed ask this first.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


class Precision(StrEnum):
    """Number type of the large matrix products of a computation (training heads, extracting tokens)."""

    FLOAT32 = "float32"
    """Full precision everywhere."""
    BFLOAT16 = "bfloat16"
    """Mixed precision: the large products and their inputs in bfloat16, weights, updates and losses float32."""

    @property
    def dtype(self) -> torch.dtype:
        """The torch type of the products."""
        return torch.float32 if self is Precision.FLOAT32 else torch.bfloat16
