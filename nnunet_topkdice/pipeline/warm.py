"""Warm starts: a pipeline's ``topkdice`` commands forked from a process that has imported torch already.

A command of a pipeline (``topkdice train``, ``predict``, ``evaluate``) started as a new interpreter
imports torch, nnU-Net and their dependencies first: about 5 s on a 2-core CPU, a quarter of one of the
demo's trainings. On the CPU the runner starts these commands from multiprocessing's *forkserver*
instead: a process that imports :data:`PRELOAD` once and forks a fresh child for each command. The child
takes the command's environment (all of it, as ``subprocess.Popen(env=...)``), working directory and
arguments, calls the console script's own entry point as the executable would, and writes its output
to a pipe that the runner reads like a subprocess's stdout. Exit codes, output and results are the
executable's (a training's weights bit for bit: ``tests/test_pipeline_warm.py``).

Where a child differs from a new interpreter: variables that a library reads when it is loaded (OpenMP's
``OMP_*``, for instance) keep the values the runner had when the forkserver started; the commands' own
variables (nnU-Net's folders, ``nnUNet_n_proc_DA``) are read when used. Python's ``atexit`` handlers do
not run (multiprocessing ends its children with ``os._exit``), and stdin is ``/dev/null``. CUDA is left
out: a process must not fork once it has touched a GPU, and on a GPU 5 s per training do not matter.
``TOPKDICE_WARM_START=0`` starts every command as a subprocess.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import import_module
from importlib.metadata import entry_points
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import BinaryIO

__all__ = ["PRELOAD", "WARM_START_VARIABLE", "WarmProcess", "entry_point", "start", "warm_start_allowed"]

#: Imported once by the forkserver: what ``topkdice train``, ``predict`` and ``evaluate`` import.
PRELOAD: tuple[str, ...] = (
    "nnunet_topkdice.cli",
    "nnunet_topkdice.training.seeded",
    "nnunet_topkdice.trainers",
    "nnunetv2.inference.predict_from_raw_data",
    "nnunet_topkdice.evaluation.evaluate",
)

#: Set to ``0`` to start every command as a new interpreter.
WARM_START_VARIABLE = "TOPKDICE_WARM_START"


def warm_start_allowed(environ: Mapping[str, str] = os.environ) -> bool:
    """True where the forkserver exists (Linux, macOS) and ``TOPKDICE_WARM_START`` is not ``0``."""
    return environ.get(WARM_START_VARIABLE, "1") != "0" and "forkserver" in multiprocessing.get_all_start_methods()


@functools.cache
def entry_point(script: str) -> str | None:
    """``"nnunet_topkdice.cli:main"`` for console script ``"topkdice"``; None if no installed package has it."""
    found = entry_points(group="console_scripts", name=script)
    return next((ep.value for ep in found), None)


class WarmProcess:
    """A command running in a child of the forkserver, with the part of ``subprocess.Popen`` the runner uses.

    ``stdout`` is a binary stream of the child's stdout and stderr together (EOF when the child and the
    processes it started have closed them); ``wait`` returns the exit code (``-N`` after signal N) and
    raises :class:`subprocess.TimeoutExpired` when ``timeout`` runs out first.
    """

    def __init__(self, process: multiprocessing.process.BaseProcess, stdout: BinaryIO, args: Sequence[str]) -> None:
        self._process = process
        self.stdout = stdout
        self.args = list(args)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()


def start(
    argv: Sequence[str], env: Mapping[str, str], *, cwd: str | None = None, target: str | None = None
) -> WarmProcess:
    """Start console script ``argv[0]`` with arguments ``argv[1:]`` in a child of the forkserver.

    ``env`` is the child's whole environment, ``cwd`` its working directory (default: this process's);
    ``target`` (``"module:function"``) is called instead of ``argv[0]``'s entry point. The child sees
    ``sys.argv == argv`` and exits with what the function returns, as a console script does.

    Raises:
        ValueError: ``argv[0]`` is not an installed console script (check with :func:`entry_point`).
    """
    target = target or entry_point(argv[0])
    if target is None:
        raise ValueError(f"{argv[0]!r} is not an installed console script")
    context = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload(list(PRELOAD))  # applies when the server starts (the first command)
    read_fd, write_fd = os.pipe()
    writer = Connection(write_fd, readable=False)  # carries the fd to the child (multiprocessing passes it)
    try:
        process = context.Process(
            target=_run_script, args=(target, list(argv), dict(env), cwd or os.getcwd(), writer), name=argv[0]
        )
        process.start()
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        writer.close()  # the child has its own copy: EOF comes when the child's copies are closed
    return WarmProcess(process, os.fdopen(read_fd, "rb"), argv)


def _run_script(target: str, argv: list[str], env: dict[str, str], cwd: str, output: Connection) -> None:
    """In the child: the command's environment, directory and output, then its entry point's exit code."""
    os.dup2(output.fileno(), 1)
    os.dup2(output.fileno(), 2)
    output.close()
    # unbuffered, as PYTHONUNBUFFERED=1 makes it for a subprocess: the log and progress bar follow live
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", write_through=True)
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
    )
    os.environ.clear()
    os.environ.update(env)
    # multiprocessing made "forkserver" this child's default; a new interpreter has the platform's (data
    # augmentation workers are started with the default)
    multiprocessing.set_start_method(None, force=True)
    os.chdir(cwd)
    sys.argv = argv
    module, _, attribute = target.partition(":")
    function = import_module(module)
    for name in attribute.split("."):
        function = getattr(function, name)
    sys.exit(function())
