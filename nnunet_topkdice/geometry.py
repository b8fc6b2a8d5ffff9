"""When two images lie on the same voxel grid: one rule for the converters and the evaluation.

NIfTI stores the header in float32, so writers round differently; spacing and origin may differ by
:data:`GEOMETRY_TOLERANCE` of the reference's smallest voxel size, direction cosines by that much. Anything
larger is a different image grid. Pure NumPy; the callers read the headers and word their own errors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["GEOMETRY_TOLERANCE", "differs"]

GEOMETRY_TOLERANCE = 1e-4


def differs(name: str, reference: Sequence[float], other: Sequence[float], reference_spacing: Sequence[float]) -> bool:
    """Whether one header property (``"spacing"``, ``"origin"`` or ``"direction"``) differs beyond the tolerance.

    Raises:
        ValueError: an unknown property name.
    """
    if name in ("spacing", "origin"):
        tolerance = GEOMETRY_TOLERANCE * min(reference_spacing)
    elif name == "direction":
        tolerance = GEOMETRY_TOLERANCE
    else:
        raise ValueError(f"name must be spacing, origin or direction, got {name!r}")
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    return a.shape != b.shape or bool(np.max(np.abs(a - b)) > tolerance)
