"""Threads against cores: a training step on fewer cores than torch has threads.

``nnUNetv2_train -device cpu`` gives torch ``multiprocessing.cpu_count()`` threads: every core of the
machine, also in a SLURM task that was given one of them. ``topkdice train`` gives it the cores the process
may run on (its CPU affinity, :func:`nnunet_topkdice.cpu_threads.cpu_cores`). This script pins itself to
``--cores`` cores and times forward + backward of a small 2D convolutional network (6 blocks of 3x3
convolution, instance norm and leaky ReLU, 32 channels, batch 4 at 40x40, the demo's patch) with as many
threads as cores (ours) and with each of ``--threads`` (nnU-Net's choice on a node of that many cores), each
in a fresh process, interleaved over ``--rounds``; it prints medians (and ranges) and their ratios to ours.

    python benchmarks/bench_threads.py --cores 1 --threads 2 16

Linux only (``os.sched_setaffinity``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

_STEP = """
import os, sys, time, torch
os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:{cores}]))
torch.set_num_threads({threads})
torch.manual_seed(0)
net = torch.nn.Sequential(*[
    torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.InstanceNorm2d(32), torch.nn.LeakyReLU())
    for _ in range(6)
])
x = torch.randn(4, 32, 40, 40)
for _ in range(3):
    net(x).sum().backward()
start = time.perf_counter()
for _ in range({iterations}):
    net(x).sum().backward()
print((time.perf_counter() - start) / {iterations} * 1000)
"""


def time_step(cores: int, threads: int, iterations: int) -> float:
    """Milliseconds per forward + backward, in a fresh process pinned to ``cores`` cores."""
    code = _STEP.format(cores=cores, threads=threads, iterations=iterations)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=1, help="cores the process may run on (default: 1)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 16],
                        help="torch threads to compare with one per core (default: 2 16)")  # fmt: skip
    parser.add_argument("--iterations", type=int, default=10, help="steps timed per process (default: 10)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per setting, interleaved (default: 3)")
    args = parser.parse_args()
    if not hasattr(os, "sched_setaffinity"):
        sys.exit("bench_threads.py needs os.sched_setaffinity (Linux)")
    if args.cores > len(os.sched_getaffinity(0)):
        sys.exit(f"--cores {args.cores}: this process may run on {len(os.sched_getaffinity(0))} cores only")
    settings = [args.cores, *args.threads]
    times: dict[int, list[float]] = {threads: [] for threads in settings}
    started = time.perf_counter()
    for _ in range(args.rounds):
        for threads in settings:
            times[threads].append(time_step(args.cores, threads, args.iterations))
    ours = statistics.median(times[args.cores])
    print(f"{args.cores} core(s), small 2D network, batch 4 at 40x40, median of {args.rounds} processes")
    for threads in settings:
        median = statistics.median(times[threads])
        who = "topkdice train (one thread per core)" if threads == args.cores else "nnU-Net on a larger node"
        spread = f"{min(times[threads]):.1f}-{max(times[threads]):.1f}"
        print(f"  {threads:3d} threads: {median:8.1f} ms per step ({spread}), {median / ours:6.2f}x  {who}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
