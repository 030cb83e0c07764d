import pytest
import torch

from usam.devices import has_fast_bfloat16, select_device
from usam.errors import InvalidInputError


def test_default_is_cuda_when_available_else_cpu():
    assert select_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu0", "cuda:x", ""])
def test_a_name_that_is_no_device_is_reported(name):
    with pytest.raises(InvalidInputError, match="not a torch device"):
        select_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_missing_gpu_is_reported():
    with pytest.raises(InvalidInputError, match="no CUDA GPU"):
        select_device("cuda")
    with pytest.raises(InvalidInputError, match="no CUDA GPU"):
        select_device("cuda:1")


def test_fast_bfloat16_follows_the_cpu_flags(monkeypatch):
    import usam.devices

    monkeypatch.setattr(usam.devices, "_cpu_flags", lambda: {"avx2", "avx512f"})
    assert has_fast_bfloat16("cpu") is False
    monkeypatch.setattr(usam.devices, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert has_fast_bfloat16("cpu") is True
    monkeypatch.setattr(usam.devices, "_cpu_flags", lambda: {"amx_bf16"})
    assert has_fast_bfloat16(torch.device("cpu")) is True
    assert has_fast_bfloat16("meta") is False


def test_cpu_flags_are_read_from_the_running_machine():
    import usam.devices

    flags = usam.devices._cpu_flags()
    try:
        with open("/proc/cpuinfo", encoding="ascii") as cpuinfo:
            expected = next((line for line in cpuinfo if line.startswith("flags")), "").partition(":")[2].split()
    except OSError:
        expected = []
    assert flags == set(expected)
