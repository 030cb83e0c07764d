"""Pinned arithmetic: a test-bed model trains to the same bits whatever else the CPU offers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from usam.testbed.numerics import (
    PINNED_ENVIRONMENT,
    THREADS_ONLY,
    arithmetic_record,
    cpu_has_avx2,
    pinned_environment,
    spawn_environment,
)

# Two steps of the tiny test-bed model on real scenes; prints a digest of the weights and the process's arithmetic.
_TRAIN_TWO_STEPS = """
import json, sys, tempfile
import torch
from usam.testbed.model_training import TrainingConfig, train_testbed_model, weights_digest
from usam.testbed.numerics import arithmetic_record
torch.set_num_threads(int(sys.argv[1]))
config = TrainingConfig(size="tiny", steps=2, scenes_per_step=2, prompts_per_scene=2, seed=5)
with tempfile.TemporaryDirectory() as folder:
    model = train_testbed_model(folder + "/m.pt", config, progress=False)
print(json.dumps({"digest": weights_digest(model.state_dict()), "arithmetic": arithmetic_record()}))
"""

# The digest of _TRAIN_TWO_STEPS with the pinned arithmetic, measured on an AMD EPYC with AVX-512, with torch 2.13.0
# and sam2 1.1.0 as install.sh pins them. Another x86-64 CPU must give the same: that is what makes the README's
# test-bed table reproducible. A new torch or sam2 may change it: then measure it again and rebuild the table.
PINNED_DIGEST = "60bed1bb1366857c1b1e78fc377f23921ecb9a73d1d3d16165cc59a1f586688f"


def _train_two_steps(environment: dict[str, str], threads: int = 1) -> dict:
    """Run _TRAIN_TWO_STEPS in a fresh process with these variables and none other of the pin's."""
    child_environment = {key: value for key, value in os.environ.items() if key not in PINNED_ENVIRONMENT}
    result = subprocess.run(
        [sys.executable, "-c", _TRAIN_TWO_STEPS, str(threads)], capture_output=True, text=True, check=False,
        env={**child_environment, **environment},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_spawn_environment_sets_variables_for_children_and_restores_them(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    with spawn_environment({"MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"}):
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(os.environ['MKL_CBWR'], os.environ['ONEDNN_MAX_CPU_ISA'])"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert child.stdout.split() == ["AVX2,STRICT", "AVX2"]
    assert os.environ["MKL_CBWR"] == "COMPATIBLE"
    assert "ONEDNN_MAX_CPU_ISA" not in os.environ


def test_the_pin_is_everything_on_x86_with_avx2_and_the_thread_elsewhere():
    expected = PINNED_ENVIRONMENT if cpu_has_avx2() else THREADS_ONLY
    assert pinned_environment() == expected
    assert THREADS_ONLY.items() <= PINNED_ENVIRONMENT.items()
    record = arithmetic_record()
    assert record["threads"] == torch.get_num_threads()
    assert record["torch"] == torch.__version__


@pytest.mark.skipif(not cpu_has_avx2(), reason="the arithmetic is pinned on x86-64 CPUs with AVX2 only")
def test_pinned_training_gives_the_same_bits_whatever_more_the_cpu_offers():
    pinned = _train_two_steps(PINNED_ENVIRONMENT)
    assert pinned["arithmetic"]["pinned"] is True
    assert pinned["arithmetic"]["threads"] == 1
    assert pinned["arithmetic"]["aten_cpu_capability"] == "AVX2"
    # What an AVX2-only CPU would give: MKL may dispatch no further than AVX2.
    avx2_only = _train_two_steps({**PINNED_ENVIRONMENT, "MKL_ENABLE_INSTRUCTIONS": "AVX2"})
    assert avx2_only["digest"] == pinned["digest"]
    if torch.backends.cpu.get_cpu_capability() == "AVX512":
        # Unpinned, on two threads with the CPU's own kernels, the same two steps end elsewhere: the pin matters.
        unpinned = _train_two_steps({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, threads=2)
        assert unpinned["arithmetic"]["aten_cpu_capability"] == "AVX512"
        assert unpinned["digest"] != pinned["digest"]
    assert pinned["digest"] == PINNED_DIGEST, (
        "the test-bed's pinned training gives other bits on this CPU than on the one that built the README's table, "
        f"so the table's models would not be reproduced exactly here (torch {torch.__version__}); report the CPU "
        "(lscpu), or, after a new torch or sam2, measure the digest again and rebuild the table"
    )
