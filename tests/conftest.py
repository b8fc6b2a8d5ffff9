"""Shared fixtures of the test suite."""

from __future__ import annotations

import pytest
import torch

# --- loss inputs (tests/test_losses_*.py) -------------------------------------------------------------


def _random_case(shape, seed=0, scale=3.0, all_present=True):
    """Logits ``shape`` (B, C, *spatial), ``randn * scale``, and a (B, 1, *spatial) int64 label map;
    with ``all_present`` every class occurs in every image (the first C voxels hold 0 .. C-1)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * scale
    target = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=generator)
    if all_present:
        flat = target.view(shape[0], -1)
        flat[:, : shape[1]] = torch.arange(shape[1])
    return logits, target


@pytest.fixture
def random_case():
    """``random_case(shape, seed=0, scale=3.0, all_present=True) -> (logits, target)``."""
    return _random_case


@pytest.fixture(params=["sort", "histogram", "histogram+radix"])
def selection_path(request, monkeypatch):
    """Force one path of ``nnunet_topkdice.losses.selection`` on any input (the CPU would pick one by size);
    ``histogram+radix`` also sends every cut bucket through the radix refinement (tiny thresholds)."""
    from nnunet_topkdice.losses import selection

    path = request.param
    monkeypatch.setattr(selection, "FORCE_PATH", path.split("+")[0])
    if path == "histogram+radix":
        monkeypatch.setattr(selection, "SORT_CANDIDATES_AT_MOST", 4)
        monkeypatch.setattr(selection, "_MIN_BUCKET_BITS", 2)
    return path


# --- end of loss inputs ---------------------------------------------------------------------------------
