"""Seeded, paired training of any nnU-Net trainer (``topkdice train --seed``).

:mod:`.seeded` holds the mechanism and the pure helpers that other tools import (the per-seed results
root, the recorded seed of a run, the ``topkdice train`` command line); :mod:`.cli` is the subcommand.
Nothing heavy is imported here, so ``topkdice --help`` stays fast.
"""
