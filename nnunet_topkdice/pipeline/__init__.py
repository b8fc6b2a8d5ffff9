"""The paper's protocol end to end: ``topkdice reproduce`` and ``topkdice demo``.

- :mod:`.reproduce`: pure builders of nnU-Net's commands, on-disk state checks, the resumable runner.
- :mod:`.demo`: the same pipeline on the synthetic dataset with the short demo schedule.
- :mod:`.synthetic`: the synthetic Synapse-like dataset generator.
- :mod:`.cli`: the two subcommands.
"""
