"""The worker pool that never outlives an error or an interrupt, and the signal helpers (issue 24)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from nnunet_topkdice.errors import Terminated, interrupt_exit_code
from nnunet_topkdice.workers import deferred_interrupts, run_in_workers, terminate_as_interrupt


def _sleep_or_fail(seconds: float) -> float:
    """A job: fail at once for a negative value, else sleep that long."""
    if seconds < 0:
        raise ValueError(f"job failed after {-seconds} s")
    time.sleep(seconds)
    return seconds


def test_results_arrive_and_the_workers_end() -> None:
    results: list[float] = []
    run_in_workers(_sleep_or_fail, [0.0, 0.1, 0.2], 2, on_result=results.append)
    assert sorted(results) == [0.0, 0.1, 0.2]
    assert multiprocessing.active_children() == []


def test_the_first_error_terminates_running_jobs_instead_of_awaiting_them() -> None:
    # before: the pool waited for the running jobs (here 60 s) before raising the first error
    start = time.monotonic()
    with pytest.raises(ValueError, match="job failed after 1.0 s"):
        run_in_workers(_sleep_or_fail, [60.0, -1.0, 60.0], 2, on_result=lambda result: None)
    assert time.monotonic() - start < 30  # spawning two workers takes a few seconds on a busy 2-core CPU
    # terminated, not awaited: each worker ends within the few seconds a kill takes (active_children reaps)
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert multiprocessing.active_children() == []


@pytest.mark.usefixtures("sigint_default")
def test_deferred_interrupts_act_once_the_block_is_done() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler has run by now: it only noted the signal
            steps.append("finished")
    assert steps == ["finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_raises_terminated_inside_and_exits_143() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated, match="SIGTERM") as info:
        with terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)
    assert interrupt_exit_code(info.value) == 143 and interrupt_exit_code(KeyboardInterrupt()) == 130
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_process_forked_inside_ends_quietly_on_sigterm(capfd: pytest.CaptureFixture[str]) -> None:
    """A library's pool worker forked inside the block (nnU-Net lists a dataset's files with one) inherits
    the handler; the pool ends it with SIGTERM, which printed a ``Terminated`` traceback per worker."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what a command starts with
    try:
        with terminate_as_interrupt():
            child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
            child.start()
            time.sleep(0.5)  # the child waits in its target, as an idle pool worker does
            child.terminate()
            child.join(10)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert child.exitcode == -signal.SIGTERM  # killed by the signal, as without the block
    assert "Traceback" not in capfd.readouterr().err
