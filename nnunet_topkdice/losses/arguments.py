"""Hyper-parameter rules shared by the losses, checked once in ``__init__`` on plain Python numbers.

Only argument validation lives here, no maths: the definition (:mod:`~nnunet_topkdice.losses.reference`)
and the implementations use it alike, so that a ``k`` valid for one is valid for all.
"""

from __future__ import annotations

__all__ = ["check_k", "check_non_negative"]


def _is_int_or_float(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_k(k: object, kept: str = "foreground voxels") -> float:
    """``k`` as a float, once it is a number (int or float, not bool) in (0, 100].

    ``kept`` names, in the error message, what ``k`` is the percent of.
    Raises:
        ValueError: ``k`` is not a number in (0, 100].
    """
    if not _is_int_or_float(k) or not 0 < k <= 100:
        raise ValueError(f"k must be a number in (0, 100] (percent of {kept} kept), got {k!r}")
    return float(k)


def check_non_negative(name: str, value: object) -> float:
    """``value`` as a float, once it is a number (int or float, not bool) ``>= 0`` (NaN is refused).

    Raises:
        ValueError: it is not, with ``name`` in the message.
    """
    if not _is_int_or_float(value) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)
