"""The CPU heap the benchmarks run on: glibc's default, or a steady heap that keeps freed memory.

glibc's ``malloc`` gives large buffers their own ``mmap`` and trims the heap after frees, so on the CPU
every fresh tensor buffer of a loss call can cost page faults (kernel time), however often the same sizes
come back. Measured on this project's CPU: the kernel's share of a ``bench_loss.py --scaling`` run was 45 s
of its 46 s elapsed, and how many page faults each loss met moved its ratio by up to 0.4. The steady heap
(``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_`` raised, read by glibc at start-up, hence the
re-execution) keeps freed memory in the process, as PyTorch's caching allocator does on a GPU, and times
the arithmetic: the default here. ``--cpu-allocator system`` keeps glibc's behaviour, which is what a
training on the CPU meets.
"""

from __future__ import annotations

import os
import sys

__all__ = ["CHOICES", "STEADY_ENVIRONMENT", "use_cpu_allocator"]

CHOICES = ("steady", "system")
STEADY_ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": "4000000000", "MALLOC_MMAP_THRESHOLD_": "4000000000"}


def _steady() -> bool:
    return all(os.environ.get(name) == value for name, value in STEADY_ENVIRONMENT.items())


def use_cpu_allocator(choice: str) -> str:
    """Make the process run on ``choice``'s heap (re-executing it once for ``"steady"``); describe the heap.

    Raises:
        ValueError: ``choice`` not in :data:`CHOICES`.
    """
    if choice not in CHOICES:
        raise ValueError(f"cpu allocator must be one of {CHOICES}, got {choice!r}")
    if choice == "system" or _steady():
        return "steady heap (glibc trims nothing, no mmap per buffer)" if _steady() else "glibc malloc defaults"
    if not sys.platform.startswith("linux"):
        return "system heap (the steady heap needs glibc)"
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STEADY_ENVIRONMENT})
    raise AssertionError("unreachable")  # execve does not return
