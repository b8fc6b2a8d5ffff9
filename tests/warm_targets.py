"""Functions that ``tests/test_pipeline_warm.py`` starts in warm children (importable by the forkserver)."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time


def report() -> int:
    """Prints what the child was given (argv, directory, environment, multiprocessing's default start
    method); exits with ``int(sys.argv[1])``."""
    seen = {"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}
    print(json.dumps({**seen, "start_method": multiprocessing.get_start_method()}))
    print("a line on stderr", file=sys.stderr)
    return int(sys.argv[1])


def wait() -> int:
    """Says it is ready, then waits (to be terminated)."""
    print("ready")
    time.sleep(600)
    return 0


def nnunet_configuration() -> int:
    """Prints nnU-Net's values read from the environment when ``nnunetv2.configuration`` is imported."""
    from nnunetv2 import configuration

    print(json.dumps([configuration.default_num_processes, configuration.default_n_proc_DA]))
    return 0
