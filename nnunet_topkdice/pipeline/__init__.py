"""Pipelines of nnU-Net's own commands: ``topkdice compare``, ``topkdice reproduce`` and ``topkdice demo``.

A pipeline is a list of steps; each knows whether it is done, what it runs and where its log goes.

- :mod:`.steps`: :class:`~.steps.Step` and :class:`~.steps.Command`, the data model.
- :mod:`.commands`: pure builders of the commands (``topkdice train --seed``, ``nnUNetv2_predict``, ...).
- :mod:`.state`: what is on disk (preprocessing, trainings, predictions, evaluations, splits).
- :mod:`.compare`: the comparison engine (trainers x seeds x folds as steps), for any dataset.
- :mod:`.runner`: orders, skips, runs and reports the steps; logs per step, a progress bar per training.
- :mod:`.progress`: reads a training's progress from nnU-Net's output.
- :mod:`.slurm`: the SLURM job array of a sweep's trainings.
- :mod:`.session`: one invocation: dry run, SLURM script or run, then the summary and verdict.
- :mod:`.reproduce`: the paper's presets over the engine; :mod:`.demo`: the synthetic demo.
- :mod:`.synthetic`: the synthetic Synapse-like dataset generator.
- :mod:`.cli`: the three subcommands.
"""
