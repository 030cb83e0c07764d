import pytest
import torch

from usam.devices import select_device
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
