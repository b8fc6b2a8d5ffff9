"""How many CPU threads torch gets in a training or prediction on the CPU.

``nnUNetv2_train -device cpu`` gives torch every core. That is right for one training at a time, but a
small network (the demo's 2D U-Net at 40x40) spends most of each iteration in per-operation overhead that
a second thread does not shorten: on a 2-core CPU, two trainings with one thread each, run side by side,
finish in 0.6 of the time of the same two run one after the other with two threads each. The pipeline
(``--cpu-jobs``) therefore runs several CPU commands at once and gives each its share of the cores through
:data:`CPU_THREADS_VARIABLE`, which it shows in front of the command, so that the command run by hand
computes the same (results on the CPU depend on the number of threads, not on what runs beside them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from nnunet_topkdice.errors import InputError

__all__ = ["CPU_THREADS_VARIABLE", "cpu_cores", "cpu_threads", "threads_per_job"]

#: torch's threads in ``topkdice train`` / ``topkdice predict`` with ``-device cpu``; unset: every core it may use.
CPU_THREADS_VARIABLE = "TOPKDICE_CPU_THREADS"


def cpu_cores() -> int:
    """The cores this process may run on (at least 1).

    Its CPU affinity where the system has one (Linux: a SLURM task's allocation, ``taskset``, a container's
    cpuset), else ``os.cpu_count()``. nnU-Net counts every core of the machine (``multiprocessing.cpu_count()``),
    which on a cluster node gives a one-core task as many threads as the node has cores: one core running
    16 threads took 25-30x the time of one thread per step of a small 2D network (docs/benchmarks.md,
    "Threads and cores").
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cpu_threads(environ: Mapping[str, str] = os.environ) -> int:
    """The threads a CPU command gives torch: :data:`CPU_THREADS_VARIABLE`, else :func:`cpu_cores`.

    Raises:
        InputError: the variable is set but not a positive integer.
    """
    text = environ.get(CPU_THREADS_VARIABLE)
    if text is None or text == "":
        return cpu_cores()
    if not text.strip().isdigit() or int(text) < 1:
        raise InputError(f"{CPU_THREADS_VARIABLE}={text!r}: expected a positive number of threads")
    return int(text)


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Each of ``jobs`` concurrent commands' share of the cores (at least one thread).

    Raises:
        ValueError: ``jobs < 1``.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    return max(1, (cores or cpu_cores()) // jobs)
