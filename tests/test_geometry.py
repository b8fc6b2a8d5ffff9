"""The one grid rule shared by the converters and the evaluation."""

from __future__ import annotations

import pytest

from nnunet_topkdice.geometry import GEOMETRY_TOLERANCE, differs


@pytest.mark.parametrize(
    ("name", "other", "expected"),
    [
        ("spacing", (0.5 + 0.9 * GEOMETRY_TOLERANCE * 0.5, 2.0), False),  # within 1e-4 of the smallest spacing
        ("spacing", (0.5 + 1.1 * GEOMETRY_TOLERANCE * 0.5, 2.0), True),
        ("origin", (0.0, 1.1 * GEOMETRY_TOLERANCE * 0.5), True),
        ("direction", (1.0, 0.9 * GEOMETRY_TOLERANCE), False),  # absolute for direction cosines
        ("direction", (1.0, 1.1 * GEOMETRY_TOLERANCE), True),
        ("origin", (0.0, 0.0, 0.0), True),  # another dimension
    ],
    ids=["spacing-within", "spacing-beyond", "origin-relative", "direction-within", "direction-beyond", "ndim"],
)
def test_tolerance_rule(name, other, expected) -> None:
    reference = {"spacing": (0.5, 2.0), "origin": (0.0, 0.0), "direction": (1.0, 0.0)}[name]
    assert differs(name, reference, other, reference_spacing=(0.5, 2.0)) is expected


def test_unknown_property() -> None:
    with pytest.raises(ValueError, match="name must be spacing, origin or direction"):
        differs("size", (1,), (1,), (1.0,))
