"""Pinned floating-point arithmetic, so that a test-bed model trains to the same bits on every x86-64 CPU.

Why: training from scratch amplifies rounding. Measured on the test-bed's tiny model: after 20 steps the loss
differs in the 7th digit between one and two threads, and between ATen's AVX2 and AVX-512 kernels; over the full
schedule such runs end as different models (the README's first build reached best-of-three mIoU 0.690 / 0.629 /
0.700, a rebuild on another CPU with two threads 0.686 / 0.596 / 0.657). The arithmetic of a training process is
therefore pinned (:data:`PINNED_ENVIRONMENT`), read by the libraries when the process starts, so the models are
trained in spawned processes started with it (:func:`spawn_environment`):

* one thread (torch, OpenMP, MKL): a parallel reduction's order depends on how the work is split;
* ATen's vectorised kernels at AVX2 (``ATEN_CPU_CAPABILITY``), whatever wider units the CPU has;
* MKL's matrix products on its AVX2 code path in strict conditional-numerical-reproducibility mode
  (``MKL_CBWR``), which Intel documents as giving the same bits on every CPU that runs that path;
* oneDNN's kernels (convolutions) at most AVX2 (``ONEDNN_MAX_CPU_ISA``).

Every x86-64 CPU since 2013 (Intel Haswell, AMD Zen) runs AVX2. On other CPUs (ARM) only the thread is pinned, and a
model is reproducible on that kind of machine only. The scenes need no pin: numpy's SIMD levels give the same pixels
and masks (checked on 300 scenes with its AVX-512 and AVX2 dispatch turned off). The price, measured on one core:
0.84 s a tiny-model step pinned against 0.77 s unpinned.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator, Mapping
from typing import Any

PINNED_ENVIRONMENT: dict[str, str] = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2,STRICT",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
"""Environment of a pinned training process (x86-64 with AVX2)."""

THREADS_ONLY: dict[str, str] = {key: PINNED_ENVIRONMENT[key] for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
"""The part of the pin that applies on every CPU."""


def cpu_has_avx2() -> bool:
    """Whether this is an x86-64 CPU with AVX2 (read from torch's own CPU detection)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    import torch

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def pinned_environment() -> dict[str, str]:
    """The environment that pins a training process's arithmetic on this machine (see the module)."""
    return dict(PINNED_ENVIRONMENT if cpu_has_avx2() else THREADS_ONLY)


@contextlib.contextmanager
def spawn_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the processes spawned inside the block, then restore the old values.

    This process's libraries read them at start-up, so they are unaffected; spawned children start with them.
    """
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def arithmetic_record() -> dict[str, Any]:
    """What this process computes with: threads, ATen's kernel level, the pin's variables (for a model card)."""
    import torch

    return {
        "threads": torch.get_num_threads(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "pinned": all(os.environ.get(key) == value for key, value in PINNED_ENVIRONMENT.items()),
        "environment": {key: os.environ.get(key) for key in PINNED_ENVIRONMENT},
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
