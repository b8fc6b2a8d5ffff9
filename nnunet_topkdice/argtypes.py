"""argparse ``type=`` validators shared by the ``topkdice`` subcommands (bad values become usage errors)."""

from __future__ import annotations

import argparse


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (worker counts, GPU counts)."""
    value = _integer(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (indices)."""
    value = _integer(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def dataset_id(text: str) -> int:
    """An nnU-Net dataset id, 1 to 999."""
    value = _integer(text, "an integer dataset id")
    if not 1 <= value <= 999:
        raise argparse.ArgumentTypeError(f"dataset id must be in [1, 999], got {text!r}")
    return value


def _up_to(text: str, high: float, expected: str, meaning: str) -> float:
    """``text`` as a number in (0, ``high``]; ``expected`` and ``meaning`` word the usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
    if not 0 < value <= high:  # NaN too
        raise argparse.ArgumentTypeError(f"{expected} ({meaning}), got {text!r}")
    return value


def k_percent(text: str) -> float:
    """TopK-Dice's k: the percent of foreground voxels kept, in (0, 100]."""
    return _up_to(text, 100, "k must be a number in (0, 100]", "percent of voxels kept")


def dice_difference(text: str) -> float:
    """A difference of mean Dice as a fraction in (0, 1] (``--target-difference``; 0.01 = one Dice point)."""
    return _up_to(text, 1, "expected a Dice difference in (0, 1]", "a fraction: 0.01 = one Dice point")


def step_size(text: str) -> float:
    """A sliding-window step as a fraction of the patch size, in (0, 1] (``-step_size``; nnU-Net asserts it only
    when it predicts)."""
    return _up_to(text, 1, "expected a number in (0, 1]", "a fraction of the patch size")
