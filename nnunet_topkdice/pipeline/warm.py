"""Warm starts: a pipeline's commands forked from a process that has imported torch already.

A command of a pipeline (``topkdice train``, ``predict``, ``evaluate``, nnU-Net's preprocessing) started as
a new interpreter imports torch and the libraries of nnU-Net first: about 5 s on a 2-core CPU, a quarter
of one of the demo's trainings. On the CPU the runner starts these commands from multiprocessing's
*forkserver* instead: a process that imports those libraries once (:data:`PRELOAD`) and forks a fresh
child for each command. The child takes the command's environment (all of it, as
``subprocess.Popen(env=...)``), working directory and arguments, calls the console script's own entry
point as the executable would, and writes its output to a pipe that the runner reads like a subprocess's
stdout. Exit codes, output and results are the executable's (a training's weights bit for bit:
``tests/test_seeded_training.py``).

nnU-Net and this package are not preloaded (importing them costs a child about 0.15 s): nnU-Net reads
``nnUNet_def_n_proc`` and ``nnUNet_n_proc_DA`` when ``nnunetv2.configuration`` is imported, and each
command must see its own values. Where a child still differs from a new interpreter: variables that the
preloaded libraries read when they load (OpenMP's ``OMP_*``, torch's ``TORCH_*``) keep the values the
runner had when the forkserver started, which the steps' own variables (nnU-Net's) do not touch. Python's
``atexit`` handlers do not run (multiprocessing ends its children with ``os._exit``), and stdin is
``/dev/null``. The process that starts commands must guard its main module (``if __name__ ==
"__main__"``), as for any forkserver. CUDA is left out: a process must not fork once it has touched a GPU,
and on a GPU 5 s per training do not matter. ``TOPKDICE_WARM_START=0`` starts every command as a new
interpreter.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from importlib import import_module
from importlib.metadata import entry_points
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import BinaryIO

__all__ = ["PRELOAD", "WARM_START_VARIABLE", "WarmProcess", "entry_point", "prestart", "start", "warm_start_allowed"]

#: Imported once by the forkserver: the third-party libraries whose imports dominate the commands' start
#: (``python -X importtime``; more than 20 ms each, 3.2 s of 3.4 s in all), never nnU-Net or this package.
PRELOAD: tuple[str, ...] = (
    "torch",
    "torch._dynamo",
    "seaborn",
    "matplotlib.pyplot",
    "pandas",
    "scipy.ndimage",
    "scipy.spatial",
    "scipy.stats",
    "statsmodels.stats.multitest",
    "sklearn.model_selection",
    "SimpleITK",
    "blosc2",
    "acvl_utils.cropping_and_padding.bounding_boxes",
    "batchgeneratorsv2.transforms.spatial.spatial",
    "batchgeneratorsv2.transforms.nnunet.random_binary_operator",
    "dynamic_network_architectures.architectures.unet",
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


#: The process that started the forkserver through :func:`prestart` (a forked child has a server of its own).
_started_by: int | None = None
#: The runner starts commands from several threads; only one may move the file descriptors 1 and 2.
_start_lock = threading.Lock()


def prestart() -> None:
    """Start the forkserver now (if it is not running), so that its imports overlap the caller's work.

    The server's stdout and stderr are ``/dev/null`` (the commands write to their own pipes): had it
    inherited this process's, a command that ends while the server still imports (a failed check, a
    finished run) would hold the caller's pipe open until those imports end (``| tee``,
    ``subprocess.run(capture_output=True)``).
    """
    global _started_by
    with _start_lock:
        forkserver.set_forkserver_preload(list(PRELOAD))
        if _started_by == os.getpid():  # started: a restart after a crash (rare) inherits the streams
            forkserver.ensure_running()
            return
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        saved = [os.dup(1), os.dup(2)]
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            forkserver.ensure_running()
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (*saved, devnull):
                os.close(fd)
        _started_by = os.getpid()


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
    prestart()  # with the preload, unless the server runs already
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
