"""Argument checks shared by every module, and the string-valued enum base for usam's options.

One validator per kind of value keeps the wording of errors uniform: a user sees the argument's name, what it
must be and what was given.
"""

from __future__ import annotations

import enum
import math
import numbers
from typing import TypeVar

from usam.errors import InvalidInputError


class StrEnum(str, enum.Enum):
    """An enum whose members are their string values, so they compare equal to, and print as, plain strings.

    ``enum.StrEnum`` exists only from Python 3.11; this base behaves the same on 3.10.
    """

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, format_spec: str) -> str:
        return format(str(self.value), format_spec)

    @classmethod
    def values(cls) -> list[str]:
        """The members' string values, in definition order."""
        return [member.value for member in cls]


EnumType = TypeVar("EnumType", bound=StrEnum)


def check_choice(enum_class: type[EnumType], value: object, name: str) -> EnumType:
    """``value`` as a member of ``enum_class``.

    Args:
        enum_class: The enum of allowed values.
        value: A member or its string value.
        name: The argument's name, for the error message.

    Returns:
        The member.

    Raises:
        InvalidInputError: If ``value`` is none of the enum's values.

    Example:
        >>> from usam.head_table import Pairing
        >>> check_choice(Pairing, "as-released", "pairing")
        <Pairing.AS_RELEASED: 'as-released'>
    """
    try:
        return enum_class(value)
    except ValueError:
        allowed = ", ".join(repr(member) for member in enum_class.values())
        raise InvalidInputError(f"{name} must be one of {allowed}, got {value!r}") from None


def check_int(
    value: object, name: str, *, minimum: int | None = None, maximum: int | None = None, optional: bool = False
) -> int | None:
    """``value`` as a Python int, checked to be a whole number within ``[minimum, maximum]``.

    Booleans and floats are refused (``True`` or ``2.5`` passed as a count is a bug at the caller).

    Args:
        value: The value to check.
        name: The argument's name, for the error message.
        minimum: Smallest allowed value, or None.
        maximum: Largest allowed value, or None.
        optional: Whether None is allowed (and returned as is).

    Returns:
        The value as ``int`` (or None when ``optional`` and ``value`` is None).

    Raises:
        InvalidInputError: If the value is not a whole number or is out of range.

    Example:
        >>> check_int(3, "epochs", minimum=1)
        3
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise InvalidInputError(f"{name} must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise InvalidInputError(f"{name} must be at most {maximum}, got {number}")
    return number


def check_float(
    value: object,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    """``value`` as a finite Python float within ``[minimum, maximum]`` (``(minimum, …`` if ``exclusive_minimum``).

    Raises:
        InvalidInputError: If the value is not a finite real number or is out of range.

    Example:
        >>> check_float(0.1, "alpha", minimum=0, maximum=1, exclusive_minimum=True)
        0.1
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InvalidInputError(f"{name} must be a finite number, got {value!r}")
    number = float(value)
    if minimum is not None and (number <= minimum if exclusive_minimum else number < minimum):
        bound = "greater than" if exclusive_minimum else "at least"
        raise InvalidInputError(f"{name} must be {bound} {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise InvalidInputError(f"{name} must be at most {maximum}, got {number}")
    return number
