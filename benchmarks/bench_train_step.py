"""Time per training iteration of nnUNetTrainerTopKDice against nnU-Net's default nnUNetTrainer.

One iteration is nnU-Net's own ``train_step``: forward, deep-supervised loss, backward, gradient
clipping and optimizer step (with mixed precision on CUDA, as nnU-Net trains). Both trainers get the
same plans, the same initial weights and the same batch; the steps are interleaved (A, B, B, A, ...)
so that machine noise hits both alike, and the medians are compared as a ratio TopK-Dice / default
(goal: <= 1.05x on the CPU).

    python benchmarks/bench_train_step.py                   # CPU, and CUDA when present
    python benchmarks/bench_train_step.py --device cpu --repeats 30 --patch-size 160 160
    python benchmarks/bench_train_step.py --device cuda --compile   # as nnU-Net trains on a GPU

On the CPU the script runs on a steady heap unless ``--cpu-allocator system`` (see ``cpu_allocator.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

import torch
from cpu_allocator import CHOICES as ALLOCATORS
from cpu_allocator import use_cpu_allocator
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_topkdice.trainers import nnUNetTrainerTopKDice
from nnunet_topkdice.trainers.standalone import (
    setup_trainer,
    synthetic_batch,
    synthetic_dataset_json,
    synthetic_plans,
)

# (patch size, batch size) per device when not given: small on the CPU, nnU-Net-sized on a GPU
# (nnU-Net plans 2D Synapse at 512x512 with batch 12 for a 512 x 512 CT).
DEFAULT_SHAPES = {
    "cpu": [((128, 128), 2), ((32, 64, 64), 2)],
    "cuda": [((512, 512), 12), ((64, 160, 160), 2)],
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_train_steps(
    device: torch.device,
    patch_size: Sequence[int],
    batch_size: int,
    n_classes: int,
    repeats: int,
    warmup: int,
    results_dir: str,
) -> dict[str, list[float]]:
    """Seconds per ``train_step`` of each trainer, interleaved, after ``warmup`` untimed steps each."""
    plans, configuration = synthetic_plans(patch_size, batch_size=batch_size)
    dataset_json = synthetic_dataset_json(n_classes)
    with contextlib.redirect_stdout(sys.stderr):  # nnU-Net's banner is not a result
        trainers = {
            cls.__name__: setup_trainer(cls, plans, configuration, dataset_json, results_dir, device)
            for cls in (nnUNetTrainer, nnUNetTrainerTopKDice)
        }
    reference, ours = trainers.values()
    ours.network.load_state_dict(reference.network.state_dict())
    batch = synthetic_batch(reference, seed=0)
    for trainer in trainers.values():
        for _ in range(warmup):
            trainer.train_step(batch)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    order = list(trainers.items())
    for _ in range(repeats):
        for name, trainer in order:
            _sync(device)
            start = time.perf_counter()
            trainer.train_step(batch)  # ends with loss.cpu(): synchronises like nnU-Net's loop
            _sync(device)
            times[name].append(time.perf_counter() - start)
        order.reverse()
    return times


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_train_step.py",
        description="Time nnU-Net training iterations (forward, loss with deep supervision, backward, "
        "optimizer step) of nnUNetTrainerTopKDice against nnUNetTrainer on the same plans and batch, "
        "and print the ratio of the medians.",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: the CPU, and CUDA when present"
    )
    parser.add_argument(
        "--patch-size", type=int, nargs="+", default=None, help="2 or 3 sizes (default: one 2D and one 3D)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: 2 (CPU), nnU-Net-like (CUDA)")
    parser.add_argument("--classes", type=int, default=9, help="classes incl. background (default 9, Synapse)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per trainer (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per trainer first (default 2)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile network and Dice term as nnU-Net does on CUDA"
    )
    parser.add_argument(
        "--cpu-allocator",
        choices=ALLOCATORS,
        default="steady",
        help="steady: freed memory stays in the process, as on a GPU (default); system: glibc's page faults "
        "on fresh buffers (see cpu_allocator.py)",
    )
    args = parser.parse_args(argv)
    if args.patch_size is not None and len(args.patch_size) not in (2, 3):
        parser.error(f"--patch-size needs 2 or 3 sizes, got {args.patch_size}")
    if args.classes < 2 or args.repeats < 1 or args.warmup < 0:
        parser.error("--classes must be >= 2, --repeats >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    heap = use_cpu_allocator(args.cpu_allocator)
    # nnU-Net compiles on CUDA by default; compilation takes minutes, so it is opt-in here
    os.environ["nnUNet_compile"] = "true" if args.compile else "false"
    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {heap}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as results_dir:  # nnU-Net's trainers write their log here
        for device_name in devices:
            device = torch.device(device_name)
            shapes = DEFAULT_SHAPES[device_name]
            if args.patch_size is not None:
                shapes = [(tuple(args.patch_size), args.batch_size or shapes[len(args.patch_size) - 2][1])]
            elif args.batch_size is not None:
                shapes = [(patch, args.batch_size) for patch, _ in shapes]
            for patch_size, batch_size in shapes:
                times = time_train_steps(
                    device, patch_size, batch_size, args.classes, args.repeats, args.warmup, results_dir
                )
                reference = statistics.median(times["nnUNetTrainer"])
                ours = statistics.median(times["nnUNetTrainerTopKDice"])
                shape = "x".join(map(str, patch_size))
                print(
                    f"{device_name:4s} {len(patch_size)}D patch {shape} batch {batch_size}, {args.classes} classes: "
                    f"nnUNetTrainer {reference * 1e3:.1f} ms, nnUNetTrainerTopKDice {ours * 1e3:.1f} ms "
                    f"(medians of {args.repeats}), ratio {ours / reference:.3f}x"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
