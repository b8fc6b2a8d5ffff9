"""Forward+backward time and peak memory of the trainers' losses: CE + TopK-Dice against nnU-Net's.

What a user runs is measured: each trainer's own loss object, as its ``_build_loss`` returns it for the
shape (``nnUNetTrainerTopKDice``'s, with deep supervision its fused ``TopKDiceDeepSupervision``; nnU-Net's
``nnUNetTrainer``, ``DC_and_CE_loss``, and ``nnUNetTrainerDiceTopK10Loss``, soft Dice + the top 10 % cross
entropy, in nnU-Net's ``DeepSupervisionWrapper``), with deep supervision off and on (the outputs at the
trainer's own scales); with deep supervision, also CE + TopK-Dice in nnU-Net's wrapper, as a user composing
it by hand would run it. All losses get identical logits and labels; runs are interleaved (A, B, C, A, B,
C, ...) so that machine noise hits them alike, and the median of each is reported, as ratios ours /
nnU-Net; a shape gets at least ``--repeats`` rounds and as many more as fill ``--min-seconds`` (small
inputs: hundreds). Goals against ``DC_and_CE_loss``: at most 1.0x time and 0.7x peak memory on the CPU, 1.2x time on
CUDA. Peak memory is the high-water mark of tensor memory allocated during one forward+backward:
``torch.cuda.max_memory_allocated`` on CUDA, the profiler's allocation trace on the CPU.

``--scaling`` times the same losses from 2D 64x64 to 512x512 and 3D 32^3 to 192^3 (batch 2, 4 classes),
deep supervision off and on: a ratio that stays flat means no term of ours grows faster than the voxels
(issue 23's goals: at most 1.2x from (2, 4, 64, 64), at most 1.0x from 0.13M voxels). Each loss's fixed
cost per call is timed first, on a tiny input (2, 4, 8, 8), and profiled (``--profile`` alone prints only
the profile): the aten operations one call dispatches, counted exactly, and the commonest by name.
``--regions`` times what the trainers' ``_build_loss`` returns for a region dataset (3 nested regions, batch
Dice, deep supervision off and on): ``nnUNetTrainerTopKDice``'s fused node and its autograd reference
(``fuse_deep_supervision = False``) against nnU-Net's ``DC_and_BCE_loss`` in its ``DeepSupervisionWrapper``;
goals: at most 1.0x time and 1.0x peak memory.
On the CPU the script runs on a steady heap unless ``--cpu-allocator system`` (see ``cpu_allocator.py``).

    python benchmarks/bench_loss.py                 # CPU, and CUDA when present
    python benchmarks/bench_loss.py --repeats 20 --device cpu --threads 2
    python benchmarks/bench_loss.py --scaling --repeats 5 --device cpu
    python benchmarks/bench_loss.py --profile --device cpu   # operations per call of each loss
    python benchmarks/bench_loss.py --regions --device cpu     # the region trainers' loss objects
    python benchmarks/bench_loss.py --clock cpu --threads 1   # CPU time: steadier on a loaded machine
    python benchmarks/bench_loss.py --cpu-allocator system    # glibc's page faults, as a CPU training
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import torch
from cpu_allocator import CHOICES as ALLOCATORS
from cpu_allocator import use_cpu_allocator
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerTopkLoss import nnUNetTrainerDiceTopK10Loss
from torch import Tensor, nn

from nnunet_topkdice.trainers import nnUNetTrainerTopKDice
from nnunet_topkdice.trainers.standalone import setup_trainer, synthetic_dataset_json, synthetic_plans

SHAPES = {
    "2D Synapse (4, 9, 320, 320)": (4, 9, 320, 320),
    "2D ACDC (8, 4, 256, 256)": (8, 4, 256, 256),
    "3D (2, 4, 64, 128, 128)": (2, 4, 64, 128, 128),
}
SCALING_SHAPES = [(2, 4, s, s) for s in (64, 128, 256, 512)] + [(2, 4, s, s, s) for s in (32, 64, 96, 128, 192)]
SMALL_VOXELS = 131072  # issue 23: from here up, at most 1.0x DC_and_CE (below, from (2, 4, 64, 64), 1.2x)
FIXED_COST_SHAPE = (2, 4, 8, 8)  # 128 voxels: the time of a call that does almost no work
BASE, TOPK, OURS = "nnU-Net DC_and_CE", "nnU-Net DC_and_topk k=10", "CE + TopK-Dice k=50"
BY_HAND = "CE + TopK-Dice in nnU-Net's wrapper"
# the trainers whose _build_loss is measured: nnU-Net's default, its nnUNetTrainerDiceTopK10Loss, ours (k=50)
TRAINERS = {BASE: nnUNetTrainer, TOPK: nnUNetTrainerDiceTopK10Loss, OURS: nnUNetTrainerTopKDice}
PROFILE_CALLS = 20  # calls profiled per loss: the operation counts are exact, the times only indicative
# region-based (sigmoid) training, BraTS-like: three nested regions
REGION_SHAPES = {
    "2D regions (8, 3, 256, 256)": (8, 3, 256, 256),
    "3D regions (2, 3, 64, 128, 128)": (2, 3, 64, 128, 128),
}
REGION_BASE, REGION_OURS = "nnU-Net DC_and_BCE", "BCE + TopK-Dice k=50"
REGION_AUTOGRAD = "BCE + TopK-Dice k=50, autograd"


class TrainerLosses(NamedTuple):
    """Losses by name, and the scales of their deep-supervision outputs (None: one output)."""

    losses: dict[str, nn.Module]
    scales: list[list[float]] | None


def trainer_losses(shape: tuple[int, ...], deep_supervision: bool, device: torch.device) -> TrainerLosses:
    """Each trainer's own loss, as its ``_build_loss`` returns it for patches of ``shape`` (synthetic plans of
    that patch size: batch Dice, one output per stage but the lowest, nnU-Net's weights), and their scales.

    With ``deep_supervision`` the losses are wrapped as the trainers wrap them (nnU-Net's
    ``DeepSupervisionWrapper``, for CE + TopK-Dice the fused ``TopKDiceDeepSupervision``), and :data:`BY_HAND`
    adds CE + TopK-Dice in nnU-Net's wrapper (the trainer's ``fuse_deep_supervision = False``), as a user
    composing it by hand would run it. Without, every trainer's loss of one output.

    Shape: shape (B, C, *spatial).  returns: losses by name; scales, one per output (None: one output).
    """
    batch, n_classes, *spatial = shape
    plans, configuration = synthetic_plans(spatial, batch_size=batch, base_features=4, max_features=32)
    dataset_json = synthetic_dataset_json(n_classes)
    losses: dict[str, nn.Module] = {}
    with tempfile.TemporaryDirectory() as results, contextlib.redirect_stdout(sys.stderr):
        for name, trainer_class in TRAINERS.items():
            trainer = setup_trainer(trainer_class, plans, configuration, dataset_json, results, device)
            trainer.enable_deep_supervision = deep_supervision
            losses[name] = trainer._build_loss()
            if deep_supervision and name == OURS:
                trainer.fuse_deep_supervision = False
                losses[BY_HAND] = trainer._build_loss()
    scales = [list(map(float, s)) for s in trainer._get_deep_supervision_scales()] if deep_supervision else None
    return TrainerLosses(losses, scales)


class _RegionLossSetup:
    """What the trainers' ``_build_loss`` reads, for a region dataset (no ignore label, batch Dice, one
    process, no torch.compile): ``_build_loss`` called on it returns the loss object a training uses."""

    def __init__(self, n_outputs: int, deep_supervision: bool, fused: bool = True) -> None:
        self.label_manager = SimpleNamespace(has_regions=True, ignore_label=None)
        self.configuration_manager = SimpleNamespace(batch_dice=True)
        self.is_ddp = False
        self.enable_deep_supervision = deep_supervision
        self.fuse_deep_supervision = fused
        self.topk_k = nnUNetTrainerTopKDice.topk_k
        self.n_outputs = n_outputs

    def _get_deep_supervision_scales(self) -> list[None]:
        return [None] * self.n_outputs

    def _do_i_compile(self) -> bool:
        return False


def _region_losses(n_outputs: int, deep_supervision: bool) -> dict[str, nn.Module]:
    """What ``_build_loss`` returns for a region dataset: nnU-Net's default trainer (``DC_and_BCE_loss``, in
    its ``DeepSupervisionWrapper`` with deep supervision), ``nnUNetTrainerTopKDice`` (the fused node), and the
    same trainer with ``fuse_deep_supervision = False`` (the autograd reference in nnU-Net's wrapper)."""
    setup = partial(_RegionLossSetup, n_outputs, deep_supervision)
    return {
        REGION_BASE: nnUNetTrainer._build_loss(setup()),
        REGION_OURS: nnUNetTrainerTopKDice._build_loss(setup()),
        REGION_AUTOGRAD: nnUNetTrainerTopKDice._build_loss(setup(fused=False)),
    }


def make_region_inputs(
    shape: tuple[int, ...], pyramid: bool, device: torch.device
) -> tuple[list[Tensor], list[Tensor]]:
    """Logits and nested 0/1 regions (label >= 1, >= 2, == 3 of random labels), bool as nnU-Net delivers them,
    at full resolution and, with ``pyramid``, at nnU-Net's halved scales down to 8 voxels."""
    generator = torch.Generator().manual_seed(0)
    batch, n_regions, *spatial = shape
    logits, targets = [], []
    scale = 1
    while True:
        size = [s // scale for s in spatial]
        logits.append(torch.randn((batch, n_regions, *size), generator=generator).mul_(3).to(device))
        labels = torch.randint(0, 4, (batch, *size), generator=generator)
        targets.append(torch.stack([labels >= 1, labels >= 2, labels == 3][:n_regions], 1).to(device))
        scale *= 2
        if not pyramid or min(s // scale for s in spatial) < 8:
            break
    return logits, targets


def make_inputs(
    shape: tuple[int, ...], scales: list[list[float]] | None, device: torch.device
) -> tuple[list[Tensor], list[Tensor]]:
    """Logits (``randn * 3``) and int16 labels (nnU-Net's loader dtype) at full resolution, or one pair per
    deep-supervision output at ``scales`` (a trainer's ``_get_deep_supervision_scales()``)."""
    generator = torch.Generator().manual_seed(0)
    batch, n_classes, *spatial = shape
    scales = [[1.0] * len(spatial)] if scales is None else scales
    sizes = [[round(s * f) for s, f in zip(spatial, scale, strict=True)] for scale in scales]
    logits, labels = [], []
    for size in sizes:
        logits.append(torch.randn((batch, n_classes, *size), generator=generator).mul_(3).to(device))
        labels.append(torch.randint(0, n_classes, (batch, 1, *size), generator=generator, dtype=torch.int16).to(device))
    return logits, labels


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(loss: nn.Module, logits: list[Tensor], labels: list[Tensor], pyramid: bool) -> None:
    leaves = [x.detach().requires_grad_(True) for x in logits]
    value = loss(leaves, labels) if pyramid else loss(leaves[0], labels[0])
    value.backward()


class Timing(NamedTuple):
    """How the runs are timed: at least ``repeats`` interleaved rounds, and enough to fill ``min_seconds``."""

    repeats: int
    clock: Callable[[], float]
    min_seconds: float


MAX_ROUNDS = 2000


def time_interleaved(
    fns: dict[str, Callable[[], None]],
    repeats: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
    min_seconds: float = 0.0,
) -> dict[str, float]:
    """Median seconds per call of each function, over interleaved rounds (A, B, C, A, B, C, ...).

    At least ``repeats`` rounds, and as many more as fill ``min_seconds`` of calls (at most
    :data:`MAX_ROUNDS`): a call of a fraction of a millisecond needs hundreds of rounds for a steady median
    on a shared machine, where ten rounds of a large input already take seconds.
    """
    start = time.perf_counter()
    for fn in fns.values():  # warm-up (allocator, tie-break cache, kernels); also times one round
        fn()
    _sync(device)
    round_seconds = max(time.perf_counter() - start, 1e-6)
    rounds = min(MAX_ROUNDS, max(repeats, math.ceil(min_seconds / round_seconds)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            start = clock()
            fn()
            _sync(device)
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory(fn: Callable[[], None], device: torch.device) -> int:
    """Bytes of tensor memory at the high-water mark of one call, above what was allocated before it."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # allocations are attributed to the op that made them, frees appear as "[memory]" events
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    usage = np.cumsum([e.self_cpu_memory_usage for e in events] or [0])
    return int(max(usage.max(), 0))


def op_profile(fn: Callable[[], None], calls: int = PROFILE_CALLS) -> tuple[float, float, collections.Counter]:
    """What one call of ``fn`` dispatches: the aten operations called from Python or from an autograd node
    (not those nested inside another aten operation), per call, with the CPU time inside them.

    returns: operations per call, milliseconds per call inside them (under the profiler: indicative only),
    and the count per call of each operation name.
    """
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    top = [
        e
        for e in prof.events()
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    ]
    names = collections.Counter(e.name.removeprefix("aten::") for e in top)
    per_call = collections.Counter({name: count / calls for name, count in names.items()})
    return len(top) / calls, sum(e.cpu_time_total for e in top) / calls / 1e3, per_call


def op_sources(fn: Callable[[], None]) -> collections.Counter:
    """Where one call's operations come from: the aten operations ``fn`` dispatches, counted by the
    innermost function of this package or of nnU-Net that called them (``module.py:function``).

    Counted by a ``TorchDispatchMode``, which sees each operation the autograd engine or Python dispatches
    (the profiler's count may differ by a few, ``detach`` and the like). Operations called from neither
    package (the benchmark, the autograd engine, torch's modules) count as ``"elsewhere"``.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    counts: collections.Counter = collections.Counter()

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN202
            frames = [
                f for f in traceback.extract_stack() if "nnunet_topkdice" in f.filename or "nnunetv2" in f.filename
            ]
            counts[f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "elsewhere"] += 1
            return func(*args, **(kwargs or {}))

    fn()  # warm
    with _Count():
        fn()
    return counts


def print_profile(device: torch.device, shape: tuple[int, ...], deep_supervision: bool) -> None:
    """The fixed cost's profile: each trainer loss's operations per call on ``shape``, the commonest named,
    and the functions that call them (:func:`op_sources`)."""
    built = trainer_losses(shape, deep_supervision, device)
    logits, labels = make_inputs(shape, built.scales, device)
    pyramid = built.scales is not None
    for name, loss in built.losses.items():
        n_ops, ms, names = op_profile(partial(_step, loss, logits, labels, pyramid))
        common = ", ".join(f"{op} {count:g}" for op, count in names.most_common(8))
        sources = op_sources(partial(_step, loss, logits, labels, pyramid))
        sources_text = ", ".join(f"{source} {count}" for source, count in sources.most_common(8))
        print(
            f"{device.type:4s} | profile {str(shape):16s} DS {'yes' if pyramid else 'no':3s} | {name:36s} | "
            f"{n_ops:5.0f} ops/call, {ms:6.3f} ms in them (profiled) | {common}\n"
            f"{'':4s} |   from: {sources_text}",
            flush=True,
        )


def _measure(
    shape: tuple[int, ...], deep_supervision: bool, device: torch.device, timing: Timing
) -> tuple[dict[str, float], dict[str, Callable[[], None]]]:
    """Interleaved median seconds per forward+backward of each trainer's loss on ``shape``, and the calls."""
    built = trainer_losses(shape, deep_supervision, device)
    logits, labels = make_inputs(shape, built.scales, device)
    pyramid = built.scales is not None
    fns = {n: partial(_step, loss, logits, labels, pyramid) for n, loss in built.losses.items()}
    return time_interleaved(fns, timing.repeats, device, timing.clock, timing.min_seconds), fns


def _ratios(times: dict[str, float]) -> dict[str, float]:
    ratios = {"time ratio": times[OURS] / times[BASE], "time ratio topk": times[OURS] / times[TOPK]}
    if BY_HAND in times:
        ratios["by hand ratio"] = times[BY_HAND] / times[BASE]
    return ratios


def run(device: torch.device, timing: Timing) -> list[dict]:
    rows = []
    for name, shape in SHAPES.items():
        for deep_supervision in (False, True):
            times, fns = _measure(shape, deep_supervision, device, timing)
            memory = {n: peak_memory(fns[n], device) for n in (BASE, OURS)}
            row = {
                "device": device.type,
                "shape": name,
                "deep supervision": "yes" if deep_supervision else "no",
                **{f"{n} ms": 1e3 * t for n, t in times.items()},
                **{f"{n} MiB": m / 2**20 for n, m in memory.items()},
                **_ratios(times),
                "memory ratio": memory[OURS] / max(memory[BASE], 1),
            }
            rows.append(row)
            by_hand = f"  by hand x{row['by hand ratio']:.2f}" if deep_supervision else ""
            print(
                f"{device.type:4s} | {name:28s} | DS {row['deep supervision']:3s} | "
                f"DC_and_CE {row[BASE + ' ms']:8.1f} ms  DC_and_topk {row[TOPK + ' ms']:8.1f} ms  "
                f"ours {row[OURS + ' ms']:8.1f} ms  time x{row['time ratio']:.2f} (x{row['time ratio topk']:.2f})"
                f"{by_hand} | DC_and_CE {row[BASE + ' MiB']:7.1f} MiB  ours {row[OURS + ' MiB']:7.1f} MiB  "
                f"memory x{row['memory ratio']:.2f}",
                flush=True,
            )
    return rows


def run_scaling(device: torch.device, timing: Timing) -> list[dict]:
    rows = []
    fixed, _ = _measure(FIXED_COST_SHAPE, False, device, timing._replace(repeats=5 * timing.repeats))
    print(
        f"{device.type:4s} | fixed cost per call {FIXED_COST_SHAPE}: "
        + "  ".join(f"{n} {1e3 * t:.2f} ms" for n, t in fixed.items()),
        flush=True,
    )
    for shape in (FIXED_COST_SHAPE, SCALING_SHAPES[0]):
        for deep_supervision in (False, True):
            print_profile(device, shape, deep_supervision)
    for shape in SCALING_SHAPES:
        for deep_supervision in (False, True):
            times, _ = _measure(shape, deep_supervision, device, timing)
            voxels = int(np.prod(shape[2:])) * shape[0]
            row = {
                "device": device.type,
                "shape": str(shape),
                "deep supervision": "yes" if deep_supervision else "no",
                "voxels": voxels,
                **{f"{n} ms": 1e3 * t for n, t in times.items()},
                "ours ns/voxel": 1e9 * times[OURS] / voxels,
                **_ratios(times),
            }
            rows.append(row)
            by_hand = f"  by hand x{row['by hand ratio']:.2f}" if deep_supervision else ""
            print(
                f"{device.type:4s} | {str(shape):22s} | DS {row['deep supervision']:3s} | {voxels:>10d} voxels | "
                f"DC_and_CE {row[BASE + ' ms']:9.1f} ms  DC_and_topk {row[TOPK + ' ms']:9.1f} ms  "
                f"ours {row[OURS + ' ms']:9.1f} ms ({row['ours ns/voxel']:.1f} ns/voxel) | "
                f"x{row['time ratio']:.2f} (x{row['time ratio topk']:.2f}){by_hand}",
                flush=True,
            )
    return rows


def run_regions(device: torch.device, timing: Timing) -> list[dict]:
    """The region trainers' loss objects against nnU-Net's, deep supervision off and on (see _region_losses)."""
    rows = []
    for name, shape in REGION_SHAPES.items():
        for pyramid in (False, True):
            logits, regions = make_region_inputs(shape, pyramid, device)
            losses = _region_losses(len(logits), pyramid)
            fns = {n: partial(_step, loss, logits, regions, pyramid) for n, loss in losses.items()}
            times = time_interleaved(fns, timing.repeats, device, timing.clock, timing.min_seconds)
            memory = {n: peak_memory(fn, device) for n, fn in fns.items()}
            row = {
                "device": device.type,
                "shape": name,
                "deep supervision": "yes" if pyramid else "no",
                **{f"{n} ms": 1e3 * t for n, t in times.items()},
                **{f"{n} MiB": m / 2**20 for n, m in memory.items()},
                "time ratio": times[REGION_OURS] / times[REGION_BASE],
                "memory ratio": memory[REGION_OURS] / max(memory[REGION_BASE], 1),
                "autograd time ratio": times[REGION_AUTOGRAD] / times[REGION_BASE],
                "autograd memory ratio": memory[REGION_AUTOGRAD] / max(memory[REGION_BASE], 1),
            }
            rows.append(row)
            print(
                f"{device.type:4s} | {name:32s} | DS {row['deep supervision']:3s} | "
                f"DC_and_BCE {row[REGION_BASE + ' ms']:8.1f} ms  ours {row[REGION_OURS + ' ms']:8.1f} ms  "
                f"autograd {row[REGION_AUTOGRAD + ' ms']:8.1f} ms  time x{row['time ratio']:.2f} "
                f"(autograd x{row['autograd time ratio']:.2f}) | DC_and_BCE {row[REGION_BASE + ' MiB']:7.1f} MiB  "
                f"ours {row[REGION_OURS + ' MiB']:7.1f} MiB  memory x{row['memory ratio']:.2f} "
                f"(autograd x{row['autograd memory ratio']:.2f})",
                flush=True,
            )
            del logits, regions
    return rows


def scaling_goals(rows: list[dict]) -> str:
    """Issue 23's goals on the scaling rows: ours / DC_and_CE at most 1.2x from (2, 4, 64, 64) up and at most
    1.0x from :data:`SMALL_VOXELS` voxels up, deep supervision on and off; the rows that miss them, named."""
    missed = [
        f"{r['device']} {r['shape']} DS {r['deep supervision']} x{r['time ratio']:.2f} (goal {goal})"
        for r in rows
        for goal in [1.0 if r["voxels"] >= SMALL_VOXELS else 1.2]
        if r["time ratio"] > goal
    ]
    return "goals (<= 1.2x from (2, 4, 64, 64), <= 1.0x from 0.13M voxels): " + (
        "met on every row" if not missed else "missed on " + "; ".join(missed)
    )


def markdown(rows: list[dict], scaling: bool, regions: bool = False) -> str:
    """The rows as in docs/benchmarks.md (times in ms; ratios ours / DC_and_CE, in brackets ours / DC_and_topk)."""
    if regions:
        lines = [
            "| device | shape | deep supervision | DC_and_BCE | BCE + TopK-Dice | time ratio | memory ratio | "
            "autograd time ratio | autograd memory ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['device']} | {r['shape']} | {r['deep supervision']} | {r[REGION_BASE + ' ms']:.1f} ms | "
                f"{r[REGION_OURS + ' ms']:.1f} ms | {r['time ratio']:.2f}x | {r['memory ratio']:.2f}x | "
                f"{r['autograd time ratio']:.2f}x | {r['autograd memory ratio']:.2f}x |"
            )
        return "\n".join(lines)
    if scaling:
        lines = [
            "| device | shape (B, C, *spatial) | deep supervision | voxels | DC_and_CE | DC_and_topk | "
            "CE + TopK-Dice | ns/voxel | ratio | ratio to DC_and_topk | ratio in nnU-Net's wrapper |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            by_hand = f"{r['by hand ratio']:.2f}x" if "by hand ratio" in r else "-"
            lines.append(
                f"| {r['device']} | {r['shape']} | {r['deep supervision']} | {r['voxels']} | "
                f"{r[BASE + ' ms']:.2f} ms | {r[TOPK + ' ms']:.2f} ms | {r[OURS + ' ms']:.2f} ms | "
                f"{r['ours ns/voxel']:.1f} | "
                f"{r['time ratio']:.2f}x | {r['time ratio topk']:.2f}x | {by_hand} |"
            )
        return "\n".join(lines)
    lines = [
        "| device | shape | deep supervision | DC_and_CE | DC_and_topk | CE + TopK-Dice | time ratio | "
        "ratio to DC_and_topk | ratio in nnU-Net's wrapper | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        by_hand = f"{r['by hand ratio']:.2f}x" if "by hand ratio" in r else "-"
        lines.append(
            f"| {r['device']} | {r['shape']} | {r['deep supervision']} | {r[BASE + ' ms']:.1f} ms | "
            f"{r[TOPK + ' ms']:.1f} ms | {r[OURS + ' ms']:.1f} ms | {r['time ratio']:.2f}x | "
            f"{r['time ratio topk']:.2f}x | {by_hand} | {r['memory ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="interleaved timed runs per loss (median reported)")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=2.0,
        help="more rounds than --repeats where they fill less than this many seconds per shape (at most "
        f"{MAX_ROUNDS}): small inputs get hundreds of rounds",
    )
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    table = parser.add_mutually_exclusive_group()
    table.add_argument("--scaling", action="store_true", help="the scaling table instead of the nnU-Net shapes")
    table.add_argument(
        "--regions", action="store_true", help="the region (sigmoid) loss against nnU-Net's DC_and_BCE_loss instead"
    )
    table.add_argument(
        "--profile",
        action="store_true",
        help="only the profile of the fixed cost (operations per call; --scaling prints it too)",
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time (default); cpu: process CPU time, steadier on a loaded machine "
        "(with several threads it also counts their waiting)",
    )
    parser.add_argument(
        "--cpu-allocator",
        choices=ALLOCATORS,
        default="steady",
        help="steady: freed memory stays in the process, as on a GPU (default); system: glibc's page faults "
        "on fresh buffers, as a CPU training meets them (see cpu_allocator.py)",
    )
    args = parser.parse_args(argv)
    heap = use_cpu_allocator(args.cpu_allocator)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.min_seconds < 0:
        parser.error(f"--min-seconds must be >= 0, got {args.min_seconds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if not devices:
        parser.error("--device cuda: no CUDA device available")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.clock} clock, {heap}", flush=True)
    if args.profile:
        for device in devices:
            for shape in (FIXED_COST_SHAPE, SCALING_SHAPES[0]):
                for deep_supervision in (False, True):
                    print_profile(device, shape, deep_supervision)
        return 0
    runner = run_scaling if args.scaling else run_regions if args.regions else run
    timing = Timing(args.repeats, clock, args.min_seconds)
    rows = [row for device in devices for row in runner(device, timing)]
    print(markdown(rows, args.scaling, args.regions))
    worst_time = max(r["time ratio"] for r in rows)
    if args.regions:
        worst_memory = max(r["memory ratio"] for r in rows)
        print(
            f"worst ratio ours / DC_and_BCE: time x{worst_time:.2f}, memory x{worst_memory:.2f} "
            "(goals: time <= 1.0, memory <= 1.0)"
        )
    elif args.scaling:
        print(f"ratio ours / DC_and_CE from x{min(r['time ratio'] for r in rows):.2f} to x{worst_time:.2f}")
        print(scaling_goals(rows))
    else:
        worst_memory = max(r["memory ratio"] for r in rows)
        print(
            f"worst ratio ours / DC_and_CE: time x{worst_time:.2f}, memory x{worst_memory:.2f} "
            "(goals: CPU time <= 1.0, memory <= 0.7; CUDA time <= 1.2)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
