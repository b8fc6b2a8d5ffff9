"""How many voxels eq. 3 excludes, ``D = floor((100 - k) / 100 * n)``, in exact integer arithmetic.

Shared by the definition (:mod:`~nnunet_topkdice.losses.reference`) and the fast selection
(:mod:`~nnunet_topkdice.losses.selection`), so that both count alike; neither imports the other.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from nnunet_topkdice.losses.arguments import check_k, k_fraction

__all__ = ["drop_fraction", "n_excluded_voxels"]

_drop_fractions: dict[float, tuple[int, int]] = {}


def drop_fraction(k: float) -> tuple[int, int]:
    """``(100 - k) / 100`` as ``(numerator, denominator)`` of an exact fraction, so that eq. 3 is exact.

    ``k`` is checked when first seen (then cached): a call in ``forward`` with a float costs a dict lookup.
    Raises:
        ValueError: ``k`` is not a number in (0, 100].
    """
    drop = _drop_fractions.get(k) if type(k) is float else None  # True == 1.0 would hit the cache
    if drop is None:  # a plain dict of plain ints: torch.compile traces it (it warned about lru_cache)
        k = check_k(k)
        fraction = 1 - k_fraction(k) / 100
        drop = _drop_fractions[k] = (fraction.numerator, fraction.denominator)
    return drop


def n_excluded_voxels(n_foreground: Tensor | np.ndarray, k: float) -> Tensor | np.ndarray:
    """``D = floor((100 - k) / 100 * n)`` (eq. 3), computed exactly in integer arithmetic.

    Shape:
        n_foreground: any shape, integer counts, a tensor or (the CPU selection) a NumPy array.
        returns: same shape and kind, int64.
    Raises:
        ValueError: ``k`` not in (0, 100].
    """
    numerator, denominator = drop_fraction(k)
    if isinstance(n_foreground, np.ndarray):
        return n_foreground.astype(np.int64, copy=False) * numerator // denominator
    counts = n_foreground if n_foreground.dtype == torch.int64 else n_foreground.long()
    return torch.div(counts * numerator, denominator, rounding_mode="floor")
