"""The fixed random perturbation ``eps`` of the paper's eq. 2, which only breaks ties in the selection.

One map per spatial shape, drawn on the CPU from a ``torch.Generator`` seeded with a fixed seed, so that
it is the same on every device, for every class and image, and in every process (a resumed training uses
the map of the interrupted one). The maps are cached: a bounded LRU (a plain ``OrderedDict``, which
``torch.compile`` traces, unlike ``functools.lru_cache``) of :data:`CACHE_ENTRIES` maps, so that calling
the loss on many image sizes (``topkdice show-ignore-map`` over a dataset) does not grow memory without
bound. Under ``torch.compile`` a cached map is read as a graph input; a missing one is drawn by an opaque
custom operator (dynamo cannot trace a ``torch.Generator``) and cached like in eager mode.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["CACHE_ENTRIES", "DEFAULT_TIE_BREAK_SCALE", "DEFAULT_TIE_BREAK_SEED", "tie_break_map"]

DEFAULT_TIE_BREAK_SEED = 0
DEFAULT_TIE_BREAK_SCALE = 1e-6
# nnU-Net's deep supervision uses up to 7 output shapes per configuration; 32 leaves room for a 2D and a 3D
# configuration on two devices while bounding the cache (a 3D 192^3 map is 28 MiB)
CACHE_ENTRIES = 32

_cache: OrderedDict[tuple, Tensor] = OrderedDict()


@torch.library.custom_op("nnunet_topkdice::draw_tie_break_map", mutates_args=())
def _draw(shape: list[int], seed: int, scale: float) -> Tensor:
    """Shape: returns ``shape`` float32 on the CPU, uniform in ``[0, scale)``."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float32).mul_(scale)


@_draw.register_fake
def _draw_fake(shape: list[int], seed: int, scale: float) -> Tensor:
    return torch.empty(shape, dtype=torch.float32)


def tie_break_map(
    spatial_shape: Sequence[int],
    device: torch.device | str = "cpu",
    *,
    seed: int = DEFAULT_TIE_BREAK_SEED,
    scale: float = DEFAULT_TIE_BREAK_SCALE,
) -> Tensor:
    """The map ``eps`` for one spatial shape (eq. 2), cached per ``(shape, device, seed, scale)``.

    Shape:
        returns: ``spatial_shape`` float32 on ``device``, uniform in ``[0, scale)``. Do not modify it in place
        (it is shared by every call on that shape).
    Raises:
        ValueError: a dimension is not positive or ``scale`` is negative.
    """
    shape = tuple(int(s) for s in spatial_shape)
    if not shape or min(shape) <= 0:
        raise ValueError(f"spatial_shape must be non-empty and positive, got {spatial_shape!r}")
    if not scale >= 0:
        raise ValueError(f"tie-break scale must be >= 0, got {scale!r}")
    device = torch.device(device)
    key = (shape, device, int(seed), float(scale))
    cached = _cache.get(key)
    if cached is not None:
        _cache.move_to_end(key)
        return cached
    drawn = _draw(list(shape), int(seed), float(scale)).to(device)
    _cache[key] = drawn  # under torch.compile, dynamo replays this after the graph, with the real tensor
    while len(_cache) > CACHE_ENTRIES:
        _cache.popitem(last=False)
    return drawn
