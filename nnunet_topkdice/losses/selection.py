"""Exact selection of the easiest voxels (eq. 4), fast: :func:`select_easiest`.

Every voxel has exactly one true class, so the foreground sets of the classes partition the image: the
selection works on one value per voxel, ``v = q + eps`` with ``q`` the probability of its true class, and
one segment per (image, class) instead of ``C`` dense maps. In each segment the ``D_c`` highest ``v`` are
excluded, equal ``v`` lowest voxel index first, so that exactly ``D_c`` are (as
:func:`nnunet_topkdice.losses.reference.reference_exclusion` defines it). The result is one code per voxel:

    CODE_MASKED (0)                 under the loss mask: takes part in nothing
    1 + c + n_classes * STATE_KEPT  a kept voxel of class c
    1 + c + n_classes * STATE_EXCLUDED  an excluded one

so that one ``scatter_add`` over ``2 C + 1`` columns forms the kept and the excluded sums of every class.

Three paths, the same result (each tested against the reference, on the CPU, by setting :data:`FORCE_PATH`):

* ``"sort"``: one stable sort of a composite key (segment, then ``v`` descending) over all voxels; the
  voxels of a segment are then contiguous, easiest first, and the ``D_c`` first of each are excluded.
  Fixed shapes only: no host synchronisation and no data-dependent shape, so it runs on CUDA and under
  ``torch.compile(fullgraph=True)``; O(N log N).
* ``"numpy"`` (the CPU path for small and mid-sized inputs): the same order from NumPy's vectorised sort of
  one unique 64-bit key per voxel (segment, value bits, inverted voxel index), on the tensors' own memory;
  the ``D_c`` last keys of each segment are its excluded voxels. It exists for the fixed cost: a NumPy call
  on a small array costs a fraction of a PyTorch dispatch, and the whole path is about fifteen of them.
* ``"histogram"`` (the CPU path for larger inputs): one histogram per segment over buckets of ``v`` finds
  the bucket that holds each cut, O(N); everything in higher buckets is excluded, and only the voxels inside
  the cut buckets (usually few) are compacted and resolved exactly: a radix refinement on their float bits
  while many remain, then one sort. The compactions (``nonzero``, boolean indexing) have data-dependent
  shapes, which is free on the CPU but would synchronise a GPU with the host.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from nnunet_topkdice.losses.counts import n_excluded_voxels
from nnunet_topkdice.losses.options import TopKDiceOptions
from nnunet_topkdice.losses.tie_break import tie_break_map

__all__ = [
    "CODE_MASKED",
    "PATHS",
    "STATE_EXCLUDED",
    "STATE_KEPT",
    "Selection",
    "select_easiest",
    "select_per_channel",
]

CODE_MASKED = 0
STATE_KEPT = 0
STATE_EXCLUDED = 1
_STATE_UNDECIDED = 2  # histogram path only: in the bucket that holds the cut of its segment

PATHS = ("sort", "numpy", "histogram")
FORCE_PATH: str | None = None  # tests set it to run one path on any input

# Tuning, measured on this project's 2-core CPU (torch 2.14, one thread, CPU time of select_easiest, k=50,
# randn * 3 logits unless noted):
# - NumPy sorts the whole input up to NUMPY_INPUT_AT_MOST values (batch x voxels): fewer and cheaper calls,
#   more comparisons. Alone the two CPU paths break even between 2**15 and 2**16 values; inside the loss
#   2**16 read no worse than 2**15 (docs/benchmarks.md, "The three selection paths", has the measurements).
#   PyTorch's CPU sort along a dimension costs 40-70 ns per value: it is the path of CUDA and compile only;
# - the histogram has about 2**_VOXELS_PER_BUCKET_BITS voxels per bucket per class on average, within
#   2**8 to 2**16 buckets. (8, 4, 256^2): 2**3 2.85 ms, 2**5 2.24 ms, 2**7 2.48 ms (randn * 10: 2.73, 2.07,
#   2.02); (4, 9, 320^2): 1.93, 1.92, 2.17; (2, 4, 128^3): 59.9, 64.0, 59.4 (noise of the loaded machine);
# - candidates in the cut buckets are refined by histograms of their next bits while more than
#   SORT_CANDIDATES_AT_MOST remain, then sorted: 256, 2048, 16384 gave 2.29, 2.14, 2.18 ms at (8, 4, 256^2)
#   and 1.96, 1.87, 1.83 ms at (4, 9, 320^2).
NUMPY_INPUT_AT_MOST = 1 << 16
SORT_CANDIDATES_AT_MOST = 2048
_VOXELS_PER_BUCKET_BITS = 5
_MIN_BUCKET_BITS = 8
_MAX_BUCKET_BITS = 16
_REGION_MAX_BUCKET_BITS = 12
# the region path sizes its buckets by all of a row's voxels, not per class: deep supervision's outputs side by
# side are classes of very different sizes, and buckets sized by their mean left the largest output's cut
# bucket with thousands of voxels to refine (2D (8, 3, 256^2) with its pyramid: 9.4 against 8.8 ms, minima)
_REGION_VOXELS_PER_BUCKET_BITS = 5

_VALUE_BITS = 31  # non-negative float32 values, read as int32, order like the values
_HALF_BITS = 0x3F000000  # float32 bits of 0.5
_FLOOR_BITS = 0x33800000  # float32 bits of 2**-24
_ONE_BITS = 0x3F800000  # float32 bits of 1.0


class Selection(NamedTuple):
    """Shapes: code (B, N) int64 (see the module docstring), None when not asked for; excluded (B, N)
    float32, 1 where excluded; n_foreground, n_excluded (B, C) int64 (``n_c`` and ``D_c`` of eq. 3)."""

    code: Tensor | None
    excluded: Tensor
    n_foreground: Tensor
    n_excluded: Tensor


def select_easiest(
    value: Tensor,
    labels: Tensor,
    n_classes: int,
    k: float,
    mask: Tensor | None,
    do_bg: bool,
    classes_per_group: int | None = None,
    *,
    with_codes: bool = True,
) -> Selection:
    """Per image and class, the ``D_c = floor((100 - k) / 100 * n_c)`` voxels with the highest ``value``.

    Background (class 0) excludes nothing unless ``do_bg``. With ``classes_per_group`` G the classes form
    groups of G, each with its own background (classes 0, G, 2 G, ...): deep supervision's outputs select
    in one call, output s's class c as class ``s * G + c`` (the selection is per class, so nothing else
    changes). The path follows the device and the input size (module docstring); on CUDA and under
    ``torch.compile`` it is always the fixed-shape sort. ``with_codes=False`` leaves the codes out (None),
    for callers that only need ``excluded`` and the counts.

    Shape:
        value: (B, N) float32, non-negative (``q + eps``, eq. 2).  labels: (B, N) int64 in [0, C) (anything
        under the mask).  mask: (B, N) bool or None.
    Raises:
        ValueError: ``k`` not in (0, 100].
    """
    group = n_classes if classes_per_group is None else classes_per_group
    path = _path(value.device, *labels.shape, n_classes)
    if k >= 100:  # nothing is excluded
        rows = labels + 1 if mask is None else (labels + 1) * mask  # 1 + c, or CODE_MASKED
        n_foreground = _count_rows(rows, n_classes)
        code = rows if with_codes else None
        return Selection(code, torch.zeros_like(value), n_foreground, torch.zeros_like(n_foreground))
    if path == "sort":
        selection = _sort_selection(value, labels, mask, n_classes, k, do_bg, group)
        return selection if with_codes else selection._replace(code=None)
    if path == "numpy":
        return _numpy_selection(value, labels, mask, n_classes, k, do_bg, group, with_codes)
    if path == "histogram":
        if mask is not None and labels.stride(0) == 0 and not with_codes:  # every row alike: the region callers
            return _column_class_selection(value, labels[0], mask, n_classes, k, do_bg, group)
        return _histogram_selection(value, labels, mask, n_classes, k, do_bg, group, with_codes)
    raise ValueError(f"selection path must be one of {PATHS}, got {path!r}")


def select_per_channel(
    probs: Tensor, target: Tensor, loss_mask: Tensor | None = None, *, options: TopKDiceOptions
) -> Selection:
    """Per image and channel of a binary target, the ``floor((100 - k) / 100 * n)`` voxels with the highest
    ``probs + eps``: :func:`select_easiest` with one class per (image, channel) row.

    The selection of overlapping regions (sigmoid outputs) and of MONAI's one-hot targets; every channel
    selects, whatever ``options.do_bg``. Arguments are not checked (see
    :func:`~nnunet_topkdice.losses.channel_exclusion_mask`); not differentiable.

    Shape: probs (B, R, *spatial) float; target (B, R, *spatial) binary; loss_mask None or broadcastable
    over the channels, 0 = ignored.  returns: a :class:`Selection` without codes, excluded (B * R, N)
    float32, counts (B * R, 1).
    """
    batch, n_channels = probs.shape[:2]
    seed, scale = options.tie_break_seed, options.tie_break_scale
    tie_break = tie_break_map(probs.shape[2:], probs.device, seed=seed, scale=scale).view(-1)
    with torch.no_grad():
        valid = target.reshape(batch * n_channels, -1)
        valid = valid if valid.dtype == torch.bool else valid != 0
        if loss_mask is not None:
            valid = valid & (loss_mask != 0).expand_as(probs).reshape(batch * n_channels, -1)
        # one class (0) per (image, channel) row (an expanded zero: no per-voxel labels to write); voxels
        # outside the channel's region are masked out
        value = probs.detach().reshape(batch * n_channels, -1).float() + tie_break
        labels = torch.zeros((), dtype=torch.long, device=probs.device).expand(valid.shape)
        return select_easiest(value, labels, 1, options.k, valid, True, with_codes=False)


def _path(device: torch.device, batch: int, n_voxels: int, n_classes: int) -> str:
    if FORCE_PATH is not None:
        return FORCE_PATH
    if device.type != "cpu" or torch.compiler.is_compiling():
        return "sort"
    if batch * n_voxels <= NUMPY_INPUT_AT_MOST and _numpy_key_bits(batch, n_voxels, n_classes) is not None:
        return "numpy"
    return "histogram"


def _count_rows(rows: Tensor, n_classes: int) -> Tensor:
    """``n_c`` per image and class.  Shape: rows (B, N) int64, ``1 + c`` or 0 (masked) -> (B, C) int64.

    ``bincount`` on the CPU; elsewhere (and under compile) a comparison with every class and a sum: fixed
    shapes, no atomics on a few counters (``bincount`` would synchronise a GPU to size its output).
    """
    batch = rows.shape[0]
    if rows.device.type == "cpu" and not torch.compiler.is_compiling():
        offset = torch.arange(0, batch * (n_classes + 1), n_classes + 1, device=rows.device)
        counts = torch.bincount((rows + offset[:, None]).view(-1), minlength=batch * (n_classes + 1))
        return counts.view(batch, n_classes + 1)[:, 1:]
    classes = torch.arange(1, n_classes + 1, device=rows.device)
    return (rows.unsqueeze(1) == classes[:, None]).sum(-1)


def _n_excluded_per_class(n_foreground: Tensor | np.ndarray, k: float, do_bg: bool, group: int) -> Tensor | np.ndarray:
    """``D_c`` (eq. 3); the backgrounds (every ``group``-th class) exclude nothing unless ``do_bg``.

    Shape: (B, C) -> (B, C) int64, a tensor or a NumPy array as given.
    """
    n_excluded = n_excluded_voxels(n_foreground, k)
    if not do_bg:
        if isinstance(n_excluded, np.ndarray):
            n_excluded[:, ::group] = 0
        else:
            n_excluded[:, ::group].zero_()  # zero_: no tensor made from the Python 0
    return n_excluded


_CONSTANTS_ENTRIES = 64  # per path: a few shapes per configuration (deep supervision concatenates them)
_sort_constants_cache: dict[tuple, tuple[Tensor, Tensor]] = {}


def _remember(cache: dict, key: tuple, value: object) -> None:
    """Store ``value`` in a bounded cache of constants, dropping the oldest entry when it is full."""
    while len(cache) >= _CONSTANTS_ENTRIES:
        del cache[next(iter(cache))]
    cache[key] = value


def _sort_constants(batch: int, n_rows: int, n_voxels: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The row ids ``0 .. n_rows`` per image (B, n_rows + 1) and the positions ``0 .. N - 1`` (N,), int64.

    Cached per shape and device (not under ``torch.compile``, where they are constants of the graph).
    """
    if torch.compiler.is_compiling():
        return torch.arange(n_rows + 1, device=device).repeat(batch, 1), torch.arange(n_voxels, device=device)
    key = (batch, n_rows, n_voxels, device)
    constants = _sort_constants_cache.get(key)
    if constants is None:
        constants = (torch.arange(n_rows + 1, device=device).repeat(batch, 1), torch.arange(n_voxels, device=device))
        _remember(_sort_constants_cache, key, constants)
    return constants


def _sort_selection(
    value: Tensor, labels: Tensor, mask: Tensor | None, n_classes: int, k: float, do_bg: bool, group: int
) -> Selection:
    """The fixed-shape path: per image, one stable sort of (row, ``value`` descending).

    Rows are ``1 + c``, or 0 for masked voxels (never excluded), so that sorting each image by
    ``row * 2**31 - bits(value)`` orders every row's voxels easiest first (the float bits of a non-negative
    float32 order like the value and are < 2**31).
    """
    batch, n_voxels = labels.shape
    n_rows = n_classes + 1
    row = labels + 1 if mask is None else (labels + 1).mul_(mask)  # also the code of a kept voxel
    # the stable sort keeps equal keys in voxel order: ties go to the lower index
    order = torch.sort((row << _VALUE_BITS).sub_(value.view(torch.int32)), dim=1, stable=True).indices
    sorted_row = row.gather(1, order)
    # row r fills the sorted positions [start_r, start_r + n_r) of its image, easiest first; counting by a
    # binary search of the row starts needs no atomics on a few counters (GPU)
    row_ids, position = _sort_constants(batch, n_rows, n_voxels, labels.device)
    bounds = torch.searchsorted(sorted_row, row_ids)  # (B, C + 2)
    counts = bounds.diff(dim=1)
    # D per row: eq. 3, none for the masked row 0 and, without do_bg, for the backgrounds (rows 1 + every
    # group-th class)
    n_excluded_rows = n_excluded_voxels(counts, k)
    n_excluded_rows[:, : 1 if do_bg else 2].zero_()
    if not do_bg and group < n_classes:
        n_excluded_rows[:, 1 + group :: group].zero_()
    # exclude the first D_r of each row
    end_excluded = bounds[:, :-1].add_(n_excluded_rows)
    excluded_sorted = position < end_excluded.gather(1, sorted_row)
    excluded = torch.empty_like(excluded_sorted).scatter_(1, order, excluded_sorted)
    code = row.add_(excluded, alpha=n_classes * STATE_EXCLUDED)
    return Selection(code, excluded.float(), counts[:, 1:], n_excluded_rows[:, 1:])


def _numpy_key_bits(batch: int, n_voxels: int, n_classes: int) -> tuple[int, int] | None:
    """The bit positions of the NumPy path's key, ``(segment << value_shift) | (bits(v) << index_bits) |
    inverted index``: ``(value_shift, index_bits)``, or None where the key would not fit in 63 bits."""
    index_bits = (batch * n_voxels - 1).bit_length()
    segment_bits = (batch * (n_classes + 1) - 1).bit_length()
    if segment_bits + _VALUE_BITS + index_bits > 63:
        return None
    return _VALUE_BITS + index_bits, index_bits


class _NumpyConstants(NamedTuple):
    """What :func:`_numpy_selection` needs besides the data, the same for every call on a shape.

    Shapes: base (B, N) int64, each voxel's image offset in the segment field and its inverted flat index
    (``2**index_bits - 1 - (b N + i)``); bounds (B (C + 1) + 1,) int64, the first key of every segment and
    one past the last; positions (B N,) int64, ``0 .. B N - 1``.
    """

    base: np.ndarray
    bounds: np.ndarray
    positions: np.ndarray
    value_shift: int
    index_bits: int


_numpy_constants_cache: dict[tuple, _NumpyConstants] = {}


def _numpy_constants(batch: int, n_voxels: int, n_classes: int) -> _NumpyConstants:
    """:class:`_NumpyConstants` for one shape, cached (a bounded dict, oldest entry dropped first)."""
    key = (batch, n_voxels, n_classes)
    constants = _numpy_constants_cache.get(key)
    if constants is None:
        value_shift, index_bits = _numpy_key_bits(batch, n_voxels, n_classes)
        n_rows = n_classes + 1
        inverted = ((1 << index_bits) - 1) - np.arange(batch * n_voxels, dtype=np.int64).reshape(batch, n_voxels)
        image = (np.arange(batch, dtype=np.int64) * n_rows << value_shift)[:, None]
        bounds = np.arange(batch * n_rows + 1, dtype=np.int64) << value_shift
        positions = np.arange(batch * n_voxels, dtype=np.int64)
        constants = _NumpyConstants(image | inverted, bounds, positions, value_shift, index_bits)
        _remember(_numpy_constants_cache, key, constants)
    return constants


def _numpy_selection(
    value: Tensor,
    labels: Tensor,
    mask: Tensor | None,
    n_classes: int,
    k: float,
    do_bg: bool,
    group: int,
    with_codes: bool = True,
) -> Selection:
    """The CPU path for small and mid-sized inputs: one NumPy sort of unique keys, on the tensors' memory.

    Each voxel's key is ``(image (C + 1) + row) << value_shift | bits(v) << index_bits | inverted index``, with
    rows ``1 + c`` or 0 (masked) as in :func:`_sort_selection`: sorted ascending, every segment is
    contiguous, easiest last, and among equal ``v`` the lower voxel index comes later, so the ``D`` last keys
    of a segment are exactly its excluded voxels. The keys are unique: no stable sort is needed.
    """
    batch, n_voxels = labels.shape
    n_rows = n_classes + 1
    constants = _numpy_constants(batch, n_voxels, n_classes)
    row = labels.numpy() + 1  # a fresh int64 array: 1 + c, the code of a kept voxel
    if mask is not None:
        row *= mask.numpy()  # 0 where masked
    key = np.left_shift(row, constants.value_shift, out=None if with_codes else row)
    # the float bits of non-negative float32 values order like the values
    bits = (value.detach() if value.requires_grad else value).numpy().view(np.int32).astype(np.int64)
    key |= np.left_shift(bits, constants.index_bits, out=bits)
    key += constants.base  # image offset (added: the segment is image (C + 1) + row) and inverted index
    key = key.reshape(-1)
    key.sort()
    bounds = np.searchsorted(key, constants.bounds)  # where each segment starts in the sorted keys
    counts = (bounds[1:] - bounds[:-1]).reshape(batch, n_rows)
    n_foreground = counts[:, 1:]
    n_excluded = _n_excluded_per_class(n_foreground, k, do_bg, group)
    # the D last sorted positions of every class segment, as one vector of ranges: output j of range s is
    # position j + (end_s - D_s) - (D_0 + ... + D_{s-1})
    ends = bounds[1:].reshape(batch, n_rows)[:, 1:].reshape(-1)
    sizes = n_excluded.reshape(-1)
    before = np.cumsum(sizes)
    n_chosen = int(before[-1])
    before -= sizes
    chosen = key[constants.positions[:n_chosen] + np.repeat(ends - sizes - before, sizes)]
    index_mask = (1 << constants.index_bits) - 1
    excluded_index = index_mask - (chosen & index_mask)
    excluded = np.zeros(batch * n_voxels, dtype=np.float32)
    excluded[excluded_index] = 1
    code = None
    if with_codes:
        code = row.reshape(-1)
        code[excluded_index] += n_classes * STATE_EXCLUDED
        code = torch.from_numpy(row)
    return Selection(
        code,
        torch.from_numpy(excluded).view(batch, n_voxels),
        torch.from_numpy(n_foreground),
        torch.from_numpy(n_excluded),
    )


def _flat_nonzero(found: np.ndarray) -> Tensor:
    """The flat indices where ``found`` is true, int64, from NumPy on the CPU tensors' own memory.

    Where few voxels are found in many, NumPy's vectorised comparison and ``flatnonzero`` cost a fraction
    of PyTorch's ``gt`` and ``nonzero`` on the CPU (131072 float32 values, one thread: 4 + 15 us against 49 +
    277 us; 1.6M: 0.7 ms against 5.6 ms), which the histogram paths spend on every call.

    Shape: found (...) bool.  returns: (n_found,) int64.
    """
    return torch.from_numpy(np.flatnonzero(found))


def _coarse_bucket(value: Tensor, bits: int, offset: Tensor) -> Tensor:
    """Histogram bucket of ``v`` plus ``offset``, non-decreasing in ``v``, in ``offset + [0, 2**bits)``.

    The lower half of the buckets covers ``v < 0.5`` by the float bits of ``v``, the upper half ``v >= 0.5``
    by the float bits of ``1 - v`` (exact there), both on a logarithmic scale clipped at 2**-24, so that
    hard voxels near 0 and the many confident voxels near 1, where the cut usually lies, both spread over
    many buckets. ``min(v, 1 - v)`` picks the side in one operation. Only int32 and float32 operations:
    int64 and bool ones cost several times more on the CPU.

    Shape: value (B, N) float32, non-negative; offset broadcastable to (B, N), int32.  returns: (B, N) int32.
    """
    top = (1 << bits) - 1
    shift = max(0, (_HALF_BITS - _FLOOR_BITS).bit_length() - (bits - 1))
    # in place where possible: on this CPU a fresh per-voxel buffer costs more (page faults) than the operation
    # distance to the nearer end; 1 - v < 0 (v > 1) clamps to the floor, the last bucket
    nearer_end = torch.rsub(value, 1)
    torch.minimum(value, nearer_end, out=nearer_end)
    level = nearer_end.view(torch.int32).clamp_(_FLOOR_BITS, _HALF_BITS - 1)
    level.sub_(_FLOOR_BITS).bitwise_right_shift_(shift)
    # v > 0.5 counts down from the top: (2**bits - 1) - level == level ^ (2**bits - 1); the sign bit of
    # 0.5 - v picks the side without a (slow) torch.where (v = 0.5 may take either: both keep the order)
    easy_side = torch.rsub(value, 0.5).view(torch.int32).bitwise_right_shift_(31)  # -1 where v > 0.5, else 0
    return level.bitwise_xor_(easy_side.bitwise_and_(top)).add_(offset)


def _cut(hist: Tensor, n_top: Tensor) -> tuple[Tensor, Tensor]:
    """Find, per row of a histogram, the bin that holds the ``n_top``-th largest element.

    Shape: hist (..., W) int, n_top (...) int64 with ``0 < n_top <= hist.sum(-1)`` (``n_top >= 1`` is required;
    rows with ``n_top > hist.sum(-1)`` get a meaningless bin that the caller must disregard).
    returns: the bin (...) and how many elements lie strictly above it (...), both int64.
    """
    inclusive = hist.cumsum(-1)
    total = inclusive[..., -1:]
    # the cut is the highest bin with at least n_top elements at or above it: the number of bins with at most
    # total - n_top elements at or below them (never the last one, which holds all, as n_top > 0)
    cut = torch.searchsorted(inclusive, total - n_top.unsqueeze(-1), right=True)
    n_above = (total - inclusive.gather(-1, cut)).squeeze(-1)
    return cut.squeeze(-1), n_above


def _resolve_candidates(
    values: Tensor, segment: Tensor, flat_index: Tensor, still_needed: Tensor, n_segments: int
) -> Tensor:
    """Exact selection among compacted candidates: the ``still_needed[s]`` largest values of each segment.

    The float bits of non-negative float32 values, read as integers, order like the values. While many
    candidates remain, a histogram of their next bits narrows them down (radix selection); the rest are
    ordered by one stable sort on (segment, value descending), so equal values keep ascending voxel order.

    Shape: values (M,) float32, non-negative; segment, flat_index (M,) int64, flat_index ascending;
    still_needed (n_segments,) int64, >= 1 for every segment that has candidates.
    returns: flat indices to exclude, int64.
    """
    chosen = []
    keys, key_bits = values.view(torch.int32).long(), _VALUE_BITS
    while keys.numel() > SORT_CANDIDATES_AT_MOST and key_bits > 0:
        digit_bits = min(key_bits, _MAX_BUCKET_BITS, max(_MIN_BUCKET_BITS, keys.numel().bit_length() - 8))
        shift = key_bits - digit_bits
        digit = (keys >> shift) & ((1 << digit_bits) - 1)
        hist = torch.bincount((segment << digit_bits) + digit, minlength=n_segments << digit_bits)
        cut, n_above = _cut(hist.view(n_segments, 1 << digit_bits), still_needed.clamp_min(1))
        voxel_cut = cut[segment]
        chosen.append(flat_index[digit > voxel_cut])
        still_needed = still_needed - n_above
        inside = digit == voxel_cut
        keys, segment, flat_index = keys[inside], segment[inside], flat_index[inside]
        key_bits = shift
    # segment * 2**31 - key: each segment in its own range of 2**31, values descending (keys < 2**31)
    order = torch.sort((segment << _VALUE_BITS).sub_(keys), stable=True).indices
    # index_select and masked_select: the same as Python indexing, without its per-call cost
    sorted_segment = segment.index_select(0, order)
    rank = torch.arange(order.numel(), device=order.device) - torch.searchsorted(sorted_segment, sorted_segment)
    kept_order = order.masked_select(rank < still_needed.index_select(0, sorted_segment))
    chosen.append(flat_index.index_select(0, kept_order))
    return chosen[0] if len(chosen) == 1 else torch.cat(chosen)


class _HistogramConstants(NamedTuple):
    """What :func:`_histogram_selection` needs besides the data, the same for every call on a shape.

    Shapes: row_offset (B, 1) int32, the first bucket of each image (plus one row without a mask: its labels
    are ``c``, not ``1 + c``); buckets (n_buckets,) int64, ``1 .. n_buckets`` (each bucket plus one); codes
    (B, C + 1, 3) float32, an expanded view: the code of row ``r`` in state ``(KEPT, UNDECIDED, EXCLUDED)[side]``.
    """

    row_offset: Tensor
    buckets: Tensor
    codes: Tensor


_histogram_constants_cache: dict[tuple, _HistogramConstants] = {}


def _histogram_constants(
    batch: int, n_classes: int, bits: int, masked: bool, device: torch.device
) -> _HistogramConstants:
    """:class:`_HistogramConstants` for one shape, cached (a bounded dict, oldest entry dropped first): made
    once, not as a handful of small allocations and host-to-device copies per call."""
    key = (batch, n_classes, bits, masked, device)
    constants = _histogram_constants_cache.get(key)
    if constants is not None:
        return constants
    n_buckets = 1 << bits
    row_offset = torch.arange(0, batch * (n_classes + 1) * n_buckets, (n_classes + 1) * n_buckets, dtype=torch.int32)
    row_offset = row_offset[:, None] + (0 if masked else n_buckets)
    state = torch.tensor([STATE_KEPT, _STATE_UNDECIDED, STATE_EXCLUDED], dtype=torch.float32)
    codes = state.mul(n_classes).add(torch.arange(n_classes + 1, dtype=torch.float32)[:, None])  # (C + 1, 3)
    constants = _HistogramConstants(
        row_offset.to(device), torch.arange(1, n_buckets + 1, device=device), codes.to(device).expand(batch, -1, -1)
    )
    _remember(_histogram_constants_cache, key, constants)
    return constants


def _histogram_selection(
    value: Tensor,
    labels: Tensor,
    mask: Tensor | None,
    n_classes: int,
    k: float,
    do_bg: bool,
    group: int,
    with_codes: bool = True,
) -> Selection:
    """The CPU path for larger inputs: a histogram per segment, then the cut buckets resolved exactly."""
    batch, n_voxels = labels.shape
    device = labels.device
    # enough voxels per bucket on average keep the histogram much cheaper than the voxels
    bits = (n_voxels // n_classes).bit_length() - _VOXELS_PER_BUCKET_BITS
    bits = min(_MAX_BUCKET_BITS, max(_MIN_BUCKET_BITS, bits))
    n_buckets = 1 << bits
    n_rows = batch * (n_classes + 1)
    constants = _histogram_constants(batch, n_classes, bits, mask is not None, device)
    # the first bucket of each voxel's row (1 + c, or 0 if masked), in int32: cheaper than int64 in the
    # per-voxel work of this path
    if mask is None:  # row_offset + n_buckets * c, converted into an int32 buffer in one operation
        row_offset = torch.empty_like(value, dtype=torch.int32)
        torch.add(constants.row_offset, labels, alpha=n_buckets, out=row_offset)
    else:
        row_offset = labels.to(torch.int32, copy=True).add_(1).mul_(mask).mul_(n_buckets).add_(constants.row_offset)
    row_bucket = _coarse_bucket(value, bits, row_offset).view(-1)
    hist = torch.bincount(row_bucket, minlength=n_rows * n_buckets).view(batch, n_classes + 1, n_buckets)[:, 1:]
    n_foreground = hist.sum(-1)
    n_excluded = _n_excluded_per_class(n_foreground, k, do_bg, group)
    cut, n_above = _cut(hist, n_excluded.clamp_min(1))
    # classes that exclude nothing, and the masked row, get a cut above every bucket
    cut = torch.nn.functional.pad(cut.masked_fill_(n_excluded == 0, n_buckets), (1, 0), value=n_buckets)
    # each bucket's state from its side of the cut (below 0, at 1, above 2), then its code per row
    side = torch.sub(constants.buckets, cut.unsqueeze(-1)).clamp_(0, 2)  # bucket + 1 - cut, integers: sign + 1
    lookup = constants.codes.gather(2, side)
    flat_code = lookup.view(-1).index_select(0, row_bucket)  # float32: cheaper than int64 here
    code = flat_code.view(batch, n_voxels)
    candidates = _flat_nonzero(flat_code.numpy() > _STATE_UNDECIDED * n_classes)
    if candidates.numel() > 0:
        row = flat_code.index_select(0, candidates).sub_(_STATE_UNDECIDED * n_classes)
        flat_code.index_copy_(0, candidates, row)
        image = torch.div(candidates, n_voxels, rounding_mode="floor")
        segment = torch.add(row.long(), image, alpha=n_classes).sub_(1)  # image * C + c
        still_needed = (n_excluded - n_above).view(-1)
        candidate_values = value.view(-1).index_select(0, candidates)
        chosen = _resolve_candidates(candidate_values, segment, candidates, still_needed, batch * n_classes)
        flat_code.index_add_(0, chosen, torch.full_like(chosen, n_classes * STATE_EXCLUDED, dtype=code.dtype))
    code_index = code.long() if with_codes else None
    excluded = code.sub_(n_classes).clamp_(0, 1)  # 1 + C + c -> >= 1, 1 + c -> <= 0
    return Selection(code_index, excluded, n_foreground, n_excluded)


def _easy_end_bucket(value: Tensor, bits: int) -> Tensor:
    """Histogram bucket of ``v`` in ``[0, 2**bits)``, non-decreasing in ``v``, from the float bits of
    ``1 - v`` clipped to ``[2**-24, 1]``: logarithmic towards ``v = 1``, where the confident voxels and the
    cuts of a trained network lie, linear below ``v = 0.5`` (``2**(bits - 5)`` buckets there). Four
    float32/int32 operations, against ten for :func:`_coarse_bucket`'s two logarithmic ends.

    Shape: value (B, N) float32 in ``[0, 1 + scale)``.  returns: (B, N) int32, a fresh buffer.
    """
    # 1 - v lies in [2**-24, 1] after the clip, float bits in [_FLOOR_BITS, _ONE_BITS]: a span of 0.75 * 2**28,
    # so a shift by 28 - bits leaves 0.75 * 2**bits levels
    shift = 28 - bits
    level = torch.rsub(value, 1).clamp_(min=2.0**-24).view(torch.int32).bitwise_right_shift_(shift)
    return torch.sub(_ONE_BITS >> shift, level, out=level)


def _column_class_selection(
    value: Tensor, column_class: Tensor, mask: Tensor, n_classes: int, k: float, do_bg: bool, group: int
) -> Selection:
    """The histogram path where every row has the same class per column (the region selection: one class per
    (image, region) row, or deep supervision's outputs side by side) and the mask says which voxels count.

    What it saves against :func:`_histogram_selection` on the region loss's inputs: no per-voxel labels are
    read, the buckets are those of :func:`_easy_end_bucket` (four operations), the mask enters the keys as one
    int32 product, the histogram is kept within the cache
    (:data:`_REGION_MAX_BUCKET_BITS` bits per segment: on (2, 3, 64, 128, 128) the general path's 2**16
    buckets made the histogram, its cuts and its look-up miss the cache), the undecided voxels are found by
    an int32 shift rather than a comparison, and only excluded-or-not is formed (no codes). The same exact
    result.

    Shape: value (B, N) float32, non-negative; column_class (N,) int in [0, C) (an expanded scalar allowed);
    mask (B, N) bool.  returns: a :class:`Selection` without codes.
    """
    batch, n_voxels = value.shape
    device = value.device
    bits = n_voxels.bit_length() - _REGION_VOXELS_PER_BUCKET_BITS
    bits = min(_REGION_MAX_BUCKET_BITS, max(_MIN_BUCKET_BITS, bits))
    n_buckets = 1 << bits
    n_segments = batch * n_classes
    n_bins = n_segments * n_buckets
    # key = segment * n_buckets + bucket, plus n_bins for masked voxels: they fill a second histogram that is
    # dropped, spread over its buckets like the counted ones (one bin for all would serialise the counting)
    base = torch.arange(0, n_bins, n_classes * n_buckets, device=device, dtype=torch.int32)[:, None]
    key = _easy_end_bucket(value, bits).add_(base + n_bins).sub_(mask.to(torch.int32), alpha=n_bins)
    if column_class.stride(0) != 0:  # classes differ between columns
        key.add_(column_class.to(torch.int32) * n_buckets)
    hist = torch.bincount(key.view(-1), minlength=2 * n_bins)[:n_bins].view(batch, n_classes, n_buckets)
    n_foreground = hist.sum(-1)
    n_excluded = _n_excluded_per_class(n_foreground, k, do_bg, group)
    cut, n_above = _cut(hist, n_excluded.clamp_min(1))
    # segments that exclude nothing get a cut above every bin; per bin: 0 kept (below the cut), 1 excluded
    # (above), _STATE_UNDECIDED at the cut, from d = sign(bin - cut) as 2 - 1.5 d^2 + 0.5 d
    cut = torch.where(n_excluded > 0, cut, n_buckets).to(torch.float32)
    side = (torch.arange(n_buckets, device=device, dtype=torch.float32) - cut.unsqueeze(-1)).sign_()
    lookup = side.square().mul_(-1.5).add_(side, alpha=0.5).add_(_STATE_UNDECIDED)
    lookup = torch.cat([lookup.view(-1), torch.zeros_like(lookup.view(-1))])  # the masked voxels: kept
    excluded = lookup.index_select(0, key.view(-1)).view(batch, n_voxels)
    candidates = _flat_nonzero(excluded.numpy().reshape(-1) == _STATE_UNDECIDED)
    if candidates.numel() > 0:
        excluded.view(-1)[candidates] = STATE_KEPT
        image = torch.div(candidates, n_voxels, rounding_mode="floor")
        segment = image * n_classes
        if column_class.stride(0) != 0:
            segment += column_class[candidates - image * n_voxels]
        still_needed = (n_excluded - n_above).view(-1)
        chosen = _resolve_candidates(value.view(-1)[candidates], segment, candidates, still_needed, n_segments)
        excluded.view(-1)[chosen] = STATE_EXCLUDED
    return Selection(None, excluded, n_foreground, n_excluded)
