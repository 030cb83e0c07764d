import numpy as np
import pytest

from usam.devices import Precision
from usam.errors import InvalidInputError
from usam.head_table import Pairing
from usam.validation import check_choice, check_float, check_int


def test_string_enums_compare_and_print_as_their_values():
    assert Pairing.TRUE == "true"
    assert f"{Pairing.AS_RELEASED}" == "as-released"
    assert str(Precision.BFLOAT16) == "bfloat16"
    assert Precision.values() == ["float32", "bfloat16"]
    assert Precision("bfloat16").dtype.is_floating_point


def test_check_choice_names_the_argument_and_the_choices():
    assert check_choice(Pairing, "true", "pairing") is Pairing.TRUE
    with pytest.raises(InvalidInputError, match=r"pairing must be one of 'true', 'as-released', got 'false'"):
        check_choice(Pairing, "false", "pairing")


@pytest.mark.parametrize("value", [True, 2.0, "3", None])
def test_check_int_refuses_what_is_not_a_whole_number(value):
    with pytest.raises(InvalidInputError, match="epochs must be a whole number"):
        check_int(value, "epochs")


def test_check_int_ranges():
    assert check_int(np.int64(4), "n", minimum=1) == 4
    assert isinstance(check_int(np.int64(4), "n"), int)
    assert check_int(None, "n", optional=True) is None
    with pytest.raises(InvalidInputError, match="n must be at least 1, got 0"):
        check_int(0, "n", minimum=1)
    with pytest.raises(InvalidInputError, match="n must be at most 3, got 4"):
        check_int(4, "n", maximum=3)


def test_check_float():
    assert check_float(1, "alpha", minimum=0) == 1.0
    for bad in (float("nan"), float("inf"), "0.1", True):
        with pytest.raises(InvalidInputError, match="alpha must be a finite number"):
            check_float(bad, "alpha")
    with pytest.raises(InvalidInputError, match="greater than 0"):
        check_float(0.0, "alpha", minimum=0, exclusive_minimum=True)
    with pytest.raises(InvalidInputError, match="at most 1"):
        check_float(1.5, "alpha", maximum=1)
