"""Exceptions shared by the command line tools."""


class InputError(ValueError):
    """Bad user input (a missing file, a wrong argument): the CLI prints it and exits with code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs; the CLI exits with 143
    (128 + 15) instead of 130."""


def interrupt_exit_code(interrupt: KeyboardInterrupt) -> int:
    """The shell's exit code of an interrupted command: 128 + the signal number (130 SIGINT, 143 SIGTERM)."""
    return 143 if isinstance(interrupt, Terminated) else 130
