"""The runner: orders the steps of a pipeline, skips the finished ones, runs the others and reports.

The terminal shows one line per step (``[3/9] $ COMMAND`` or ``[3/9] skipped (already trained): ...``)
and a progress bar per training; each command's whole output goes to ``<log_dir>/<step>.log``. When a
command fails, the last lines of its log and the log's path are printed and
:class:`subprocess.CalledProcessError` is raised. ``verbose`` streams the commands' output as well.
Steps that share a ``parallel`` key and stand next to each other run concurrently when several slots
(``CUDA_VISIBLE_DEVICES`` groups, or ``--cpu-jobs``' shares of the cores) are given; only such steps get a
slot's variables, also when one runs alone. With ``warm_start``, the commands of :data:`WARM_SCRIPTS` start
from a process that has imported torch and nnU-Net's libraries already (:mod:`.warm`).
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from nnunet_topkdice.pipeline import warm
from nnunet_topkdice.pipeline.progress import TrainingBar
from nnunet_topkdice.pipeline.steps import Command, Span, Step, resolve_executable
from nnunet_topkdice.workers import terminate_as_interrupt

#: Lines of a failed command's log shown on the terminal.
FAILURE_TAIL_LINES = 20


@dataclass
class RunReport:
    """Which steps ran (and when: ``time.monotonic()`` at start and end) and which were already done."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    spans: dict[str, Span] = field(default_factory=dict)  # step name -> (start, end), steps that ran

    def __add__(self, other: RunReport) -> RunReport:
        return RunReport(self.ran + other.ran, self.skipped + other.skipped, {**self.spans, **other.spans})


def describe_steps(steps: Sequence[Step], parallel_env: Mapping[str, str] | None = None) -> list[str]:
    """One line per step, as :func:`run_steps` would print it, without running anything (a dry run).

    ``parallel_env``: the variables every slot gives the steps of a parallel kind (``--cpu-jobs``' threads),
    shown in front of their commands; None where the slots differ (GPUs) or there are none."""
    lines = []
    for index, step in enumerate(steps, 1):
        reason = step.done()
        prefix = f"[{index}/{len(steps)}]"
        if reason:
            lines.append(f"{prefix} skipped ({reason}): {step.title}")
        else:
            lines.append(f"{prefix} {step.describe(parallel_env if step.parallel is not None else None)}")
    return lines


def log_tail(log_file: Path, n_lines: int = FAILURE_TAIL_LINES, start: int = 0) -> list[str]:
    """The last ``n_lines`` lines of a log file from byte ``start`` on (this run's part of a log that every
    run of the step appends to); empty if it does not exist."""
    try:
        with open(log_file, "rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace").splitlines()[-n_lines:]
    except OSError:
        return []


class _Terminal:
    """Serialises what the steps print (they may run in threads)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            print(text, file=self.stream, flush=True)


# SIGTERM (kill, a scheduler's time limit) stops the running commands too, as Ctrl-C does: it raises
# Terminated, a KeyboardInterrupt, during each run; restored afterwards and not inherited by forked children
@terminate_as_interrupt()
def run_steps(
    steps: Sequence[Step],
    env: Mapping[str, str],
    *,
    log_dir: Path,
    verbose: bool = False,
    slots: Sequence[Mapping[str, str]] = (),
    stream: TextIO | None = None,
    first: int = 1,
    total: int | None = None,
    warm_start: bool = False,
) -> RunReport:
    """Run the steps in order, skipping those that are done.

    Args:
        steps: the pipeline.
        env: the environment of every command (a command's own variables are added to it).
        log_dir: receives ``<step name>.log`` for every step that runs.
        verbose: also stream each command's output to ``stream``.
        slots: per-slot environment (``{"CUDA_VISIBLE_DEVICES": "0"}``, ``{"TOPKDICE_CPU_THREADS": "1"}``,
            ...) for the steps with a ``parallel`` key; with two or more, such steps next to each other run
            concurrently, one per slot.
        stream: where the step lines go (default: stderr, so that stdout carries only results).
        first, total: the number of the first step and of all steps on the terminal (``[first/total]``),
            for a pipeline run in parts; by default ``steps`` is the whole pipeline.
        warm_start: start the commands of :data:`WARM_SCRIPTS` from a process that has imported torch
            already (:mod:`.warm`; not for CUDA: the caller decides). Other commands start as subprocesses.

    Raises:
        subprocess.CalledProcessError: a command failed (concurrent steps finish first).
        InputError: an in-process step found bad input.
    """
    terminal = _Terminal(stream or sys.stderr)
    log_dir = Path(log_dir)
    report = RunReport()
    total = len(steps) + first - 1 if total is None else total
    index = 0
    while index < len(steps):
        batch = [steps[index]]
        if steps[index].parallel is not None and len(slots) > 1:
            while index + len(batch) < len(steps) and steps[index + len(batch)].parallel == steps[index].parallel:
                batch.append(steps[index + len(batch)])
        todo = []
        for offset, step in enumerate(batch):
            number = first + index + offset
            reason = step.done()
            if reason:
                terminal.line(f"[{number}/{total}] skipped ({reason}): {step.title}")
                report.skipped.append(step.name)
            else:
                todo.append((number, step))
        if len(todo) > 1 and len(slots) > 1:
            report.spans.update(_run_concurrently(todo, total, env, log_dir, verbose, slots, terminal, warm_start))
        else:
            for number, step in todo:
                # a step of a parallel kind runs in a slot also alone (the same command as beside others)
                slot = dict(slots[0]) if slots and step.parallel is not None else {}
                report.spans[step.name] = _execute(
                    number, total, step, env, log_dir, verbose, slot, terminal, position=0, warm_start=warm_start
                )  # fmt: skip
        report.ran += [step.name for _, step in todo]
        index += len(batch)
    return report


def _run_concurrently(
    todo: list[tuple[int, Step]],
    total: int,
    env: Mapping[str, str],
    log_dir: Path,
    verbose: bool,
    slots: Sequence[Mapping[str, str]],
    terminal: _Terminal,
    warm_start: bool,
) -> dict[str, Span]:
    """Run the steps, one per slot at a time, started in order; returns each step's (start, end)."""
    free: queue.Queue[int] = queue.Queue()
    for position in range(len(slots)):
        free.put(position)

    def work(number: int, step: Step, position: int, announced: threading.Event) -> Span:
        try:
            return _execute(number, total, step, env, log_dir, verbose, dict(slots[position]), terminal,
                            position=position, warm_start=warm_start, announced=announced)  # fmt: skip
        finally:
            free.put(position)

    spans: dict[str, Span] = {}
    failures: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        futures: list[Future[Span]] = []
        try:
            for number, step in todo:
                position = free.get()
                announced = threading.Event()
                futures.append(pool.submit(work, number, step, position, announced))
                # the next one's line after this one's: the terminal lists the steps in order
                while not announced.wait(0.05) and not futures[-1].done():
                    pass
            for (_, step), future in zip(todo, futures, strict=True):
                try:
                    spans[step.name] = future.result()
                except Exception as e:  # the others keep running; the first failure is raised at the end
                    failures.append(e)
        except BaseException:  # Ctrl-C or SIGTERM: stop the commands so that the threads can end
            for future in futures:
                future.cancel()
            _stop_all()
            raise
    if failures:
        raise failures[0]
    return spans


# Child processes still running, so that an interrupt (Ctrl-C) stops them too.
_RUNNING: set[subprocess.Popen | warm.WarmProcess] = set()
_RUNNING_LOCK = threading.Lock()


def _execute(
    number: int,
    total: int,
    step: Step,
    env: Mapping[str, str],
    log_dir: Path,
    verbose: bool,
    slot_env: Mapping[str, str],
    terminal: _Terminal,
    *,
    position: int,
    warm_start: bool = False,
    announced: threading.Event | None = None,
) -> Span:
    """Run one step (its ``after`` too); returns when it started and ended (``time.monotonic()``).

    ``announced`` is set once the step's line is on the terminal."""
    started = time.monotonic()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{step.name}.log"
    if step.action is not None:
        terminal.line(f"[{number}/{total}] {step.title}")
        _set(announced)
        step.action(log_file)
    else:
        assert step.command is not None
        command = step.command().with_env(slot_env)
        terminal.line(f"[{number}/{total}] $ {command.shell()}")
        _set(announced)
        bar = TrainingBar(step.title, step.training_dir, stream=terminal.stream, position=position)
        bar_used = step.training_dir is not None and not verbose
        this_run = log_file.stat().st_size if log_file.is_file() else 0  # where this run's lines begin
        with open(log_file, "a", encoding="utf-8", buffering=1) as log:  # line-buffered: follow it live
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} $ {command.shell()}\n")
            log.flush()
            # Unbuffered, so that the log and the progress bar follow the command as it runs.
            child_env = {"PYTHONUNBUFFERED": "1", **env, **command.env}
            process = _start(command, child_env, warm_start)
            with _RUNNING_LOCK:
                _RUNNING.add(process)
            try:
                assert process.stdout is not None
                for raw in process.stdout:
                    line = raw.decode("utf-8", errors="replace")
                    log.write(line)
                    if verbose:
                        with terminal.lock:
                            terminal.stream.write(line)
                            terminal.stream.flush()
                    elif bar_used:
                        with terminal.lock:
                            bar.feed(line)
                returncode = process.wait()
            except BaseException:
                _stop_all()
                raise
            finally:
                with _RUNNING_LOCK:
                    _RUNNING.discard(process)
        if bar_used:
            with terminal.lock:
                bar.close(returncode == 0)
        if returncode != 0:
            tail = "\n".join("    " + line for line in log_tail(log_file, start=this_run))
            terminal.line(f"FAILED (exit code {returncode}): {step.title}\n{tail}\n  whole log: {log_file}")
            raise subprocess.CalledProcessError(returncode, command.shell())
    if step.after is not None:
        step.after()
    return started, time.monotonic()


def _set(event: threading.Event | None) -> None:
    if event is not None:
        event.set()


#: The console scripts started warm (:mod:`.warm`): this package's and nnU-Net's preprocessing (whose
#: worker pools start new interpreters either way; the same files written, compared byte for byte).
WARM_SCRIPTS = ("topkdice", "nnUNetv2_plan_and_preprocess")


def _start(command: Command, env: dict[str, str], warm_start: bool) -> subprocess.Popen | warm.WarmProcess:
    """The command with its output piped: forked warm (see :data:`WARM_SCRIPTS`) or a new interpreter."""
    name = command.argv[0]
    if warm_start and name in WARM_SCRIPTS and warm.warm_start_allowed(env) and warm.entry_point(name):
        return warm.start(command.argv, env)
    argv = resolve_executable(name) + list(command.argv[1:])
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _stop_all() -> None:
    with _RUNNING_LOCK:
        processes = list(_RUNNING)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
