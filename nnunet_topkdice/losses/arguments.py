"""Hyper-parameter rules shared by the losses, checked once in ``__init__`` (never in ``forward``).

Only argument validation lives here, no maths: the options of the TopK-Dice losses
(:class:`~nnunet_topkdice.losses.options.TopKDiceOptions`), the MONAI drop-in and the region baselines use
the same rules, so that a ``k`` valid for one is valid for all.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import numpy as np
import torch

__all__ = ["K_MAX_DENOMINATOR", "as_real", "check_flag", "check_k", "check_non_negative", "check_seed", "k_fraction"]


def as_real(value: object) -> float | None:
    """``value`` as a float when it is a real number, else None.

    Real numbers are Python ``int``/``float``, NumPy integer and floating scalars, and 0-d integer or
    floating tensors (read once, on the host: construction time, not ``forward``). ``bool`` (Python,
    NumPy or tensor) is not a number here.
    """
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or value.dtype == torch.bool or value.is_complex():
            return None
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # NumPy's bool_ is not numbers.Real
        return None
    return float(value)


#: eq. 3 counts with ``k`` as a fraction whose denominator is at most this: 6 decimal places (33.3 is 333/10),
#: or a simple fraction (``100 / 3`` is 100/3), which keeps the integer products of the count within int64.
K_MAX_DENOMINATOR = 10**6


def k_fraction(k: float) -> Fraction:
    """``k`` as the fraction eq. 3 counts with: the closest one with a denominator up to
    :data:`K_MAX_DENOMINATOR` (the decimal the user wrote, not the float's binary value)."""
    return Fraction(k).limit_denominator(K_MAX_DENOMINATOR)


def check_k(k: object, kept: str = "foreground voxels") -> float:
    """``k`` as a float, once it is a real number (see :func:`as_real`) in (0, 100] that eq. 3 can count
    with exactly (:func:`k_fraction` equal to it to float precision); NaN is refused.

    ``kept`` names, in the error message, what ``k`` is the percent of.
    Raises:
        ValueError: ``k`` is not a number in (0, 100], or no fraction of denominator at most
            :data:`K_MAX_DENOMINATOR` matches it to 12 significant digits (1e-9 was counted as 0: every voxel
            excluded), with the value received.
    """
    value = as_real(k)
    if value is None or not 0 < value <= 100:
        raise ValueError(f"k must be a number in (0, 100] (percent of {kept} kept), got {k!r}")
    if not math.isclose(float(k_fraction(value)), value, rel_tol=1e-12, abs_tol=0.0):
        raise ValueError(f"k must match a fraction of denominator at most 10^6 to 12 significant digits (a "
                         f"decimal with at most 6 decimal places, or a simple fraction such as 100 / 3): eq. 3 "
                         f"counts the {kept} kept exactly, got {k!r}")  # fmt: skip
    return value


def check_non_negative(name: str, value: object) -> float:
    """``value`` as a float, once it is a finite real number (see :func:`as_real`) ``>= 0``.

    Raises:
        ValueError: it is not (NaN and infinity included), with ``name`` and the value in the message.
    """
    number = as_real(value)
    if number is None or not 0 <= number < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def check_flag(name: str, value: object) -> bool:
    """``value`` as a bool, once it is one (Python or NumPy ``bool``, or the integers 0 and 1).

    Raises:
        ValueError: anything else (a string such as ``"False"`` would otherwise count as True).
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be a bool, got {value!r}")


def check_seed(name: str, value: object) -> int:
    """``value`` as an int, once it is an integer (Python or NumPy, not bool).

    Raises:
        ValueError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)
