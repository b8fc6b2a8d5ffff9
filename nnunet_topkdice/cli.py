"""The ``topkdice`` command line tool.

Each subcommand lives in the module that owns its work and registers itself through an
``add_parsers(subparsers)`` function that sets ``func`` on its parser. ``func(args) -> int``
returns the exit code. Heavy imports (torch, nnU-Net) happen inside ``func`` so that
``topkdice --help`` stays fast.

Exit codes: 0 success, 2 usage or input errors (:class:`~nnunet_topkdice.errors.InputError`),
1 failures of a step (for example an nnU-Net command that failed), 130 after Ctrl-C (SIGINT) and 143
after SIGTERM, once the workers are stopped and anything half-written is removed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

from nnunet_topkdice import __version__
from nnunet_topkdice.errors import InputError, interrupt_exit_code
from nnunet_topkdice.ext import trainer_dir
from nnunet_topkdice.workers import terminate_as_interrupt


class SubcommandParser(argparse.ArgumentParser):
    """The parser of a subcommand: arguments it does not know are its own usage error, so the message shows
    ``topkdice predict``'s usage (argparse leaves them to the top-level parser, which shows ``topkdice``'s)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def _trainer_dir_command(args: argparse.Namespace) -> int:
    print(trainer_dir())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from dataset_conversion.cli import add_parsers as add_conversion_parsers
    from nnunet_topkdice.evaluation.cli import add_parsers as add_evaluation_parsers
    from nnunet_topkdice.pipeline.cli import add_parsers as add_pipeline_parsers
    from nnunet_topkdice.pipeline.predict import add_parsers as add_prediction_parsers
    from nnunet_topkdice.training.cli import add_parsers as add_training_parsers

    parser = argparse.ArgumentParser(
        prog="topkdice",
        description="TopK-Dice loss for nnU-Net v2: convert the paper's datasets, train its losses, "
        "evaluate them like the paper, or run a demo of the whole pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=SubcommandParser)

    p = subparsers.add_parser(
        "trainer-dir",
        help="print the folder to export as nnUNet_extTrainer",
        description="Print the folder that nnU-Net's nnUNet_extTrainer variable must point at so that "
        "nnUNetv2_train and nnUNetv2_predict find this package's trainers. Prints only the path.",
    )
    p.set_defaults(func=_trainer_dir_command)

    add_conversion_parsers(subparsers)
    add_evaluation_parsers(subparsers)
    add_pipeline_parsers(subparsers)
    add_prediction_parsers(subparsers)
    add_training_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``topkdice``; returns the exit code (also when called from tests)."""
    prog = "topkdice"
    try:
        with terminate_as_interrupt():  # SIGTERM cleans up like Ctrl-C
            args = build_parser().parse_args(argv)
            prog = f"topkdice {args.command}"
            return int(args.func(args))
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        cmd = e.cmd if isinstance(e.cmd, str) else " ".join(map(str, e.cmd))
        print(f"{prog}: command failed with exit code {e.returncode}: {cmd}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"{prog}: interrupted", file=sys.stderr)
        return interrupt_exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
