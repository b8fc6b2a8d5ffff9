"""Worker processes that never outlive an interrupt, and interrupts that never cut a publish in half.

A Ctrl-C in a terminal sends SIGINT to every process of the foreground group: the command and its
workers. A worker that raises KeyboardInterrupt while it holds one of the pool's queue locks (or is
between a ``get`` and a ``put``) leaves the others blocked on that lock and the command waiting for them
forever (issue 24: a worker blocked on a semaphore, another on a pipe, the command waiting on both). So:

* workers ignore SIGINT (set before their first instruction: they start with SIGINT blocked, and
  their initializer ignores it, then unblocks it), and only the command handles the interrupt;
* on any exception in the command (a worker's error, KeyboardInterrupt, SIGTERM turned into
  :class:`~nnunet_topkdice.errors.Terminated` by :func:`terminate_as_interrupt`) the workers are
  terminated at once, never awaited, so the command exits within seconds and no worker writes any more
  before the caller cleans up;
* :func:`deferred_interrupts` holds SIGINT and SIGTERM back during the few renames that publish a result
  (or that clean up after a failure), so an interrupt never leaves half of them done.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, TypeVar

from nnunet_topkdice.errors import Terminated

__all__ = ["deferred_interrupts", "run_in_workers", "terminate_as_interrupt"]

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Seconds a terminated worker gets to exit before it is killed.
TERMINATE_GRACE_S = 5.0
_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


def _ignore_sigint_in_worker() -> None:
    """Worker initializer: ignore SIGINT (the command handles it), then unblock it (see :func:`_sigint_blocked`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while workers are started: a started process inherits the mask, so a
    Ctrl-C during its start-up waits (and is then discarded by its initializer) instead of raising
    KeyboardInterrupt in the middle of its imports. This process still gets the interrupt afterwards."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    from multiprocessing import resource_tracker

    # Started now, not inside the block: starting it unblocks SIGINT and SIGTERM in this thread.
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _terminate(processes: Iterable[multiprocessing.process.BaseProcess]) -> None:
    """SIGTERM every process, wait up to :data:`TERMINATE_GRACE_S` in all, then SIGKILL the ones left."""
    processes = [p for p in processes if p.is_alive()]
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(TERMINATE_GRACE_S)
        if process.is_alive():
            process.kill()
            process.join(1.0)


def run_in_workers(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    num_processes: int,
    on_result: Callable[[Result], Any],
) -> None:
    """Call ``function(item)`` for every item in ``num_processes`` spawned worker processes (spawn, as
    nnU-Net does: safe with torch and SimpleITK threads) and ``on_result(result)`` here, in completion order.

    The first exception (a worker's, re-raised here, or KeyboardInterrupt/SIGTERM in this process)
    terminates the workers at once; it is raised when they are gone.

    Args:
        function: a module-level function (sent to the workers by pickling), as ``items`` must be.
    Raises:
        whatever ``function`` or ``on_result`` raises; KeyboardInterrupt.
    """
    before = set(multiprocessing.active_children())
    executor: ProcessPoolExecutor | None = None
    try:
        # The workers start in submit(). An interrupt waits until each has been handed its start-up data
        # (a worker cut off before that prints an EOFError), and the workers start with SIGINT blocked.
        with deferred_interrupts(), _sigint_blocked():
            executor = ProcessPoolExecutor(
                max_workers=num_processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_sigint_in_worker,
            )
            pending: set[Future[Result]] = {executor.submit(function, item) for item in items}
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
            for future in done:
                on_result(future.result())  # re-raises the worker's exception
        executor.shutdown(wait=True)
    except BaseException:
        with deferred_interrupts():  # a second Ctrl-C must not leave workers behind
            _terminate(set(multiprocessing.active_children()) - before)
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        raise


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back inside the block and act on the first one received when it ends.

    For short sequences that must happen completely or not at all (the renames that publish a dataset).
    Only in the main thread (where Python runs signal handlers); elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in _INTERRUPTS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])  # the handler of before acts now


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM (``kill``, a scheduler's time limit) raises
    :class:`~nnunet_topkdice.errors.Terminated`, a KeyboardInterrupt, so that the same clean-up runs as
    for Ctrl-C (the command then exits with 143). Only in the main thread; the previous handler is restored.

    A process forked inside the block inherits the handler: a library's ``multiprocessing.Pool`` worker
    (nnU-Net lists a dataset's files with one), which the pool ends with SIGTERM. There the previous
    handler acts instead, so that those workers end quietly rather than each printing a traceback.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:  # installed outside Python: the default action is what the child would have had
        previous = signal.SIG_DFL

    def on_sigterm(signum: int, frame: object) -> None:
        if os.getpid() == owner:
            raise Terminated(f"received signal {signal.Signals(signum).name}")
        signal.signal(signum, previous)  # a forked child: as if the block had never been entered
        signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
