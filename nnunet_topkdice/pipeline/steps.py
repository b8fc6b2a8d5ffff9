"""What a pipeline is made of: commands and steps.

A pipeline is a list of :class:`Step`. Each step knows whether it is already done (and says why), what
it runs (a :class:`Command`, built when the step runs so that it reflects what is on disk then, e.g.
nnU-Net's ``--c`` for an interrupted training; or a small in-process action), and where its log goes
(``<log_dir>/<name>.log``). The runner (:mod:`.runner`) only orders, skips, runs and reports them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_topkdice.errors import InputError

#: When a step ran: ``time.monotonic()`` at its start and at its end.
Span = tuple[float, float]


@dataclass(frozen=True)
class Command:
    """The argv a user types (executables by their name) and the variables shown in front of it."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # e.g. nnUNet_results of one seed

    def shell(self) -> str:
        """The command as one shell line, environment assignments first."""
        prefix = [f"{key}={shlex.quote(value)}" for key, value in self.env.items()]
        return " ".join([*prefix, shlex.join(self.argv)])

    def with_env(self, extra: Mapping[str, str]) -> Command:
        return Command(self.argv, {**self.env, **extra})


@dataclass(frozen=True)
class Step:
    """One unit of work of a pipeline.

    Attributes:
        name: unique and file-safe; the log is ``<log_dir>/<name>.log``. Its first word (up to ``_``)
            is the step's phase in :data:`PHASES` (``train_...`` is one of the trainings).
        title: one line saying what the step does (the progress bar label of a training).
        done: returns why the step has nothing left to do ("already trained"), or None when it has work.
        command: builds the command to run; called only when the step runs (or is listed by a dry run).
        action: in-process work instead of a command (copying files, writing a split); gets the log path.
        after: bookkeeping once the step succeeded (e.g. the stamp of an evaluation).
        training_dir: for a training, nnU-Net's fold folder (the progress bar reads ``debug.json`` there).
        parallel: steps next to each other with the same key may run at the same time, one per GPU slot.
    """

    name: str
    title: str
    done: Callable[[], str | None]
    command: Callable[[], Command] | None = None
    action: Callable[[Path], None] | None = None
    after: Callable[[], None] | None = None
    training_dir: Path | None = None
    parallel: str | None = None

    def __post_init__(self) -> None:
        if (self.command is None) == (self.action is None):
            raise ValueError(f"step {self.name!r} needs exactly one of command and action")
        if not self.name or any(c in self.name for c in "/\\ "):
            raise ValueError(f"step name must be non-empty and file-safe, got {self.name!r}")

    def describe(self, env: Mapping[str, str] | None = None) -> str:
        """The command line (``$ ...``, with ``env`` in front) of a command step, the title of an in-process step."""
        if self.command is not None:
            return "$ " + self.command().with_env(env or {}).shell()
        return self.title


#: The phase of a step by the first word of its name, in pipeline order (the demo's time summary).
PHASES: dict[str, str] = {
    "generate": "generation",
    "convert": "conversion",
    "preprocess": "preprocessing",
    "split": "preprocessing",
    "train": "trainings",
    "predict": "predictions",
    "collect": "collection",
    "evaluate": "evaluation",
}


def phase_of(step_name: str) -> str:
    """``"train_nnUNetTrainer_seed0_foldall"`` -> ``"trainings"``; an unknown first word is its own phase."""
    word = step_name.split("_", 1)[0]
    return PHASES.get(word, word)


def phase_seconds(spans: Mapping[str, Span]) -> dict[str, tuple[float, int]]:
    """Step name -> (start, end), in running order, as phase -> (wall-clock seconds, number of steps), in that
    order. A phase's seconds are the time during which at least one of its steps ran: steps run side by
    side (``--gpus``, ``--cpu-jobs``) count once."""
    grouped: dict[str, list[Span]] = {}
    for name, span in spans.items():
        grouped.setdefault(phase_of(name), []).append(span)
    return {phase: (_covered_seconds(group), len(group)) for phase, group in grouped.items()}


def _covered_seconds(spans: list[Span]) -> float:
    """The length of the union of the intervals."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def format_duration(seconds: float) -> str:
    """``4.2`` -> ``"4 s"``, ``312.6`` -> ``"5 min 13 s"`` (rounded to the second)."""
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60} s" if whole >= 60 else f"{whole} s"


def format_phase_times(spans: Mapping[str, Span], total: float) -> str:
    """One line: each phase's wall-clock time (with its number of steps when several) and the total."""
    parts = [
        f"{phase} {format_duration(value)}" + (f" ({count} steps)" if count > 1 else "")
        for phase, (value, count) in phase_seconds(spans).items()
    ]
    return f"Time: {', '.join(parts) or 'nothing ran'}; total {format_duration(total)}"


def file_safe(text: str) -> str:
    """``"CE + Dice"`` -> ``"CE_+_Dice"``: a name usable in file names and step names."""
    return "".join(c if c.isalnum() or c in "+-._" else "_" for c in text.strip())


def resolve_executable(name: str) -> list[str]:
    """The argv prefix that runs console script ``name`` from the current Python environment.

    Scripts are looked up next to the running interpreter first (``.venv/bin/topkdice demo`` works
    without activating the virtualenv), then on PATH. ``topkdice`` falls back to
    ``python -m nnunet_topkdice.cli``.

    Raises:
        InputError: the script is nowhere to be found.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    on_path = shutil.which(name)
    if on_path is not None:
        return [on_path]
    if name == "topkdice":
        return [sys.executable, "-m", "nnunet_topkdice.cli"]
    raise InputError(f"{name} not found next to {sys.executable} nor on PATH; is nnunetv2 installed?")
