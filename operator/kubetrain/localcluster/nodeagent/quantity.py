"""Kubernetes resource quantities (``500m``, ``2Gi``, ``1e3``) as exact fractions."""

from __future__ import annotations

import math
import re
from fractions import Fraction

_SUFFIXES = {
    "": Fraction(1),
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:([eE][+-]?[0-9]+)|([a-zA-Z]*))$")


def parse(text: str | int | float) -> Fraction:
    """The exact value of a quantity; raises ValueError for malformed input."""
    match = _QUANTITY.match(str(text).strip())
    if not match or match.group(3) not in (None, *_SUFFIXES):
        raise ValueError(f"not a quantity: {text!r}")
    number, exponent, suffix = match.groups()
    value = Fraction(number)
    if exponent:
        value *= Fraction(10) ** int(exponent[1:])
    return value * _SUFFIXES[suffix or ""]


def ceil_div(value: Fraction, divisor: Fraction) -> int:
    """``value / divisor`` rounded up, as the downward API reports resources."""
    if divisor <= 0:
        raise ValueError("divisor must be positive")
    return math.ceil(value / divisor)
