"""Forward+backward time and peak memory of CE + TopK-Dice against nnU-Net's default DC_and_CE_loss.

Both losses get identical logits and labels; runs are interleaved (A, B, A, B, ...) so that machine
noise hits both alike, and the median of each is reported. Printed as ratios ours / nnU-Net
(goal: <= 1.5x time and memory). Peak memory is the high-water mark of tensor memory allocated
during one forward+backward: ``torch.cuda.max_memory_allocated`` on CUDA, the profiler's allocation
trace on the CPU.

    python benchmarks/bench_loss.py                 # CPU, and CUDA when present
    python benchmarks/bench_loss.py --repeats 20 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch import Tensor, nn

from nnunet_topkdice.losses import CE_and_TopKDice_loss

SHAPES = {
    "2D Synapse (4, 9, 320, 320)": (4, 9, 320, 320),
    "2D ACDC (8, 4, 256, 256)": (8, 4, 256, 256),
    "3D (2, 4, 64, 128, 128)": (2, 4, 64, 128, 128),
}


def nnunet_default(batch_dice: bool = True) -> nn.Module:
    return DC_and_CE_loss(
        {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        ignore_label=None,
        dice_class=MemoryEfficientSoftDiceLoss,
    )


def ce_topk_dice(k: float = 50.0, batch_dice: bool = True) -> nn.Module:
    return CE_and_TopKDice_loss({"k": k, "batch_dice": batch_dice, "do_bg": False, "smooth": 1e-5, "ddp": False}, {})


def deep_supervision(loss: nn.Module, n_scales: int) -> nn.Module:
    """nnU-Net's weighting: 1/2^i, the last output 0, normalised."""
    weights = np.array([1 / (2**i) for i in range(n_scales)])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


def make_inputs(shape: tuple[int, ...], pyramid: bool, device: torch.device) -> tuple[list[Tensor], list[Tensor]]:
    """Logits and labels at full resolution and, with ``pyramid``, at nnU-Net's halved scales down to 8 voxels."""
    generator = torch.Generator().manual_seed(0)
    batch, n_classes, *spatial = shape
    logits, labels = [], []
    scale = 1
    while True:
        size = [s // scale for s in spatial]
        logits.append(torch.randn((batch, n_classes, *size), generator=generator).mul_(3).to(device))
        labels.append(torch.randint(0, n_classes, (batch, 1, *size), generator=generator, dtype=torch.int16).to(device))
        scale *= 2
        if not pyramid or min(s // scale for s in spatial) < 8:
            break
    return logits, labels


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(loss: nn.Module, logits: list[Tensor], labels: list[Tensor], pyramid: bool) -> None:
    leaves = [x.detach().requires_grad_(True) for x in logits]
    value = loss(leaves, labels) if pyramid else loss(leaves[0], labels[0])
    value.backward()


def time_interleaved(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    for fn in fns.values():  # warm-up (allocator, tie-break cache, kernels)
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
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


def run(device: torch.device, repeats: int) -> list[dict]:
    rows = []
    for name, shape in SHAPES.items():
        for pyramid in (False, True):
            logits, labels = make_inputs(shape, pyramid, device)
            losses = {"nnU-Net DC_and_CE": nnunet_default(), "CE + TopK-Dice k=50": ce_topk_dice()}
            if pyramid:
                losses = {n: deep_supervision(loss, len(logits)) for n, loss in losses.items()}
            fns = {n: partial(_step, loss, logits, labels, pyramid) for n, loss in losses.items()}
            times = time_interleaved(fns, repeats, device)
            memory = {n: peak_memory(fn, device) for n, fn in fns.items()}
            base, ours = "nnU-Net DC_and_CE", "CE + TopK-Dice k=50"
            row = {
                "device": device.type,
                "shape": name,
                "deep supervision": "yes" if pyramid else "no",
                "nnU-Net ms": 1e3 * times[base],
                "ours ms": 1e3 * times[ours],
                "time ratio": times[ours] / times[base],
                "nnU-Net MiB": memory[base] / 2**20,
                "ours MiB": memory[ours] / 2**20,
                "memory ratio": memory[ours] / max(memory[base], 1),
            }
            rows.append(row)
            print(
                f"{device.type:4s} | {name:28s} | DS {row['deep supervision']:3s} | "
                f"nnU-Net {row['nnU-Net ms']:8.1f} ms  ours {row['ours ms']:8.1f} ms  "
                f"time x{row['time ratio']:.2f} | "
                f"nnU-Net {row['nnU-Net MiB']:7.1f} MiB  ours {row['ours MiB']:7.1f} MiB  "
                f"memory x{row['memory ratio']:.2f}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="interleaved timed runs per loss (median reported)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    rows = [row for device in devices for row in run(device, args.repeats)]
    worst_time = max(r["time ratio"] for r in rows)
    worst_memory = max(r["memory ratio"] for r in rows)
    print(f"worst ratio ours / nnU-Net: time x{worst_time:.2f}, memory x{worst_memory:.2f} (goal <= 1.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
