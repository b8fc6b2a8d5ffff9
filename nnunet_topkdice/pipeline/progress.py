"""A training's progress, read from the lines nnU-Net prints, shown as one progress bar.

nnU-Net prints, per epoch, ``<timestamp>: Epoch N``, ``train_loss X``, ``val_loss X``, ``Pseudo dice
[...]`` and ``Epoch time: T s``; its number of epochs is in the ``debug.json`` it writes into the fold
folder when training starts. :class:`TrainingProgress` is the pure parser; :class:`TrainingBar` draws it
with tqdm (on a terminal) or, elsewhere, prints one summary line when the training ends.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import TextIO

_EPOCH = re.compile(r":\s+Epoch (\d+)\s*$")
_TRAIN_LOSS = re.compile(r":\s+train_loss (\S+)")
_PSEUDO_DICE = re.compile(r":\s+Pseudo dice \[(.*)\]")
_EPOCH_TIME = re.compile(r":\s+Epoch time: ")
# A number not glued to a word ("np.float32(0.51)" -> 0.51, not 32).
_NUMBER = re.compile(r"(?<![\w.])(?:nan|[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


class TrainingProgress:
    """The state of one nnU-Net training, updated line by line (pure: no I/O).

    Attributes:
        epoch: the epoch running now (or last started), None before the first.
        epochs_done: epochs finished, counting from 0 (a resumed training starts at its checkpoint's).
        first_epoch: the first epoch this run started (to time only the epochs run here).
        train_loss, pseudo_dice: the last epoch's train loss and mean pseudo Dice over the classes.
    """

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.first_epoch: int | None = None
        self.epochs_done = 0
        self.train_loss = math.nan
        self.pseudo_dice = math.nan

    def feed(self, line: str) -> bool:
        """Read one line of nnU-Net's output; True when it changed the state."""
        if match := _EPOCH.search(line):
            self.epoch = int(match.group(1))
            if self.first_epoch is None:
                self.first_epoch = self.epoch
                self.epochs_done = self.epoch
            return True
        if match := _TRAIN_LOSS.search(line):
            self.train_loss = _float(match.group(1))
            return True
        if match := _PSEUDO_DICE.search(line):
            values = [_float(v) for v in _NUMBER.findall(match.group(1))]
            defined = [v for v in values if not math.isnan(v)]
            self.pseudo_dice = sum(defined) / len(defined) if defined else math.nan
            return True
        if _EPOCH_TIME.search(line) and self.epoch is not None:
            self.epochs_done = self.epoch + 1
            return True
        return False

    def postfix(self) -> str:
        """``"loss -0.5123, pseudo Dice 0.7012"`` (empty before the first epoch ends)."""
        parts = []
        if not math.isnan(self.train_loss):
            parts.append(f"loss {self.train_loss:.4f}")
        if not math.isnan(self.pseudo_dice):
            parts.append(f"pseudo Dice {self.pseudo_dice:.4f}")
        return ", ".join(parts)


def planned_epochs(training_dir: Path | None) -> int | None:
    """``num_epochs`` from the ``debug.json`` nnU-Net writes into the fold folder, or None."""
    if training_dir is None:
        return None
    try:
        return int(json.loads((Path(training_dir) / "debug.json").read_text())["num_epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class TrainingBar:
    """One bar per training: epoch n of N, last train loss and pseudo Dice, time left.

    On a terminal it is a tqdm bar left on screen when done; otherwise (a file, a CI log) nothing is
    drawn while training and :meth:`close` prints one line with the final state.
    """

    def __init__(self, label: str, training_dir: Path | None, *, stream: TextIO | None = None, position: int = 0):
        self.label = label
        self.training_dir = training_dir
        self.stream = stream or sys.stderr
        self.progress = TrainingProgress()
        self.started = time.monotonic()
        self._bar = None
        self._position = position
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def feed(self, line: str) -> None:
        if not self.progress.feed(line) or not self._interactive:
            return
        if self._bar is None and self.progress.epoch is not None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=planned_epochs(self.training_dir),
                initial=self.progress.epochs_done,
                desc=f"  {self.label}",
                unit="epoch",
                file=self.stream,
                position=self._position,
                leave=True,
                dynamic_ncols=True,
            )
        if self._bar is not None:
            self._bar.update(self.progress.epochs_done - self._bar.n)
            self._bar.set_postfix_str(self.progress.postfix(), refresh=True)

    def close(self, ok: bool) -> None:
        if self._bar is not None:
            self._bar.close()
            return
        if self.progress.epoch is None:  # no epoch ran here (e.g. only nnU-Net's final validation)
            return
        minutes = (time.monotonic() - self.started) / 60
        total = planned_epochs(self.training_dir)
        epochs = f"epoch {self.progress.epochs_done}" + (f" of {total}" if total else "")
        state = "done" if ok else "stopped"
        postfix = self.progress.postfix()
        print(f"  {self.label}: {state} at {epochs} after {minutes:.1f} min" + (f", {postfix}" if postfix else ""),
              file=self.stream, flush=True)  # fmt: skip
