"""The fixed random perturbation ``eps`` of the paper's eq. 2, which only breaks ties in the selection.

One map per spatial shape, drawn on the CPU from a ``torch.Generator`` seeded with a fixed seed, so that
it is the same on every device, for every class and image, and in every process (a resumed training uses
the map of the interrupted one). The maps are cached: a bounded LRU (a plain ``OrderedDict``, which
``torch.compile`` traces, unlike ``functools.lru_cache``) of :data:`CACHE_ENTRIES` maps, so that calling
the loss on many image sizes (``topkdice show-ignore-map`` over a dataset) does not grow memory without
bound. Under ``torch.compile`` the lookup is an opaque custom operator (dynamo cannot trace a
``torch.Generator``, and guards on the cache's contents would recompile the graph once the map is cached);
it returns a copy of the cached map, one device-to-device copy per call.
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


@torch.library.custom_op("nnunet_topkdice::tie_break_map", mutates_args=())
def _tie_break_map_op(shape: list[int], device: torch.device, seed: int, scale: float) -> Tensor:
    """:func:`tie_break_map` for compiled code: opaque to dynamo, so that neither the ``torch.Generator`` nor
    the state of the cache enter the graph or its guards (a cache filled after compiling would otherwise
    recompile it). Returns a copy: an operator's output must not alias a tensor kept elsewhere."""
    return tie_break_map(shape, device, seed=seed, scale=scale).clone()


@_tie_break_map_op.register_fake
def _tie_break_map_fake(shape: list[int], device: torch.device, seed: int, scale: float) -> Tensor:
    return torch.empty(shape, dtype=torch.float32, device=device)


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
    if torch.compiler.is_compiling():
        return _tie_break_map_op(list(shape), device, int(seed), float(scale))
    key = (shape, device, int(seed), float(scale))
    cached = _cache.get(key)
    if cached is not None:
        _cache.move_to_end(key)
        return cached
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    drawn = (torch.rand(shape, generator=generator, dtype=torch.float32) * scale).to(device)
    _cache[key] = drawn
    while len(_cache) > CACHE_ENTRIES:
        _cache.popitem(last=False)
    return drawn
