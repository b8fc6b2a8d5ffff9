"""The command-line body shared by every converter (``topkdice convert NAME`` and ``python -m``).

Each converter module has ``convert(src, raw_root, *, dataset_id, overwrite, num_processes, ...) -> Path``.
A module may also define

* ``command_options(args) -> dict``: its further keyword arguments of ``convert``, taken from the command
  line or the environment (ACDC: ``$nnUNet_preprocessed``; MSSEG: ``--seed``), and
* ``command_summary(folder) -> str``: lines printed before the folder (MSSEG: the split drawn).

The dataset folder is printed last, alone on its line, so that scripts can read it from stdout.
"""

from __future__ import annotations

import argparse
import importlib

from dataset_conversion import common
from dataset_conversion.cli import OVERWRITE_FLAG
from nnunet_topkdice.errors import OverwriteRefused


def run_conversion(dataset: str, args: argparse.Namespace) -> int:
    """Convert ``dataset`` as ``args`` ask, print the summary and the folder; returns 0.

    Raises:
        InputError: from the converter (bad input, existing target, no output folder); an existing output
            names ``--overwrite``.
    """
    module = importlib.import_module(f"dataset_conversion.{dataset}")
    options = module.command_options(args) if hasattr(module, "command_options") else {}
    try:
        folder = module.convert(
            args.input,
            common.resolve_raw_root(args.output),
            dataset_id=args.dataset_id,
            overwrite=args.overwrite,
            num_processes=args.num_processes,
            **options,
        )
    except OverwriteRefused as e:  # the converters name the API's overwrite=True; here it is a flag
        raise e.spelled(OVERWRITE_FLAG) from None
    if hasattr(module, "command_summary"):
        print(module.command_summary(folder))
    print(folder)
    return 0
