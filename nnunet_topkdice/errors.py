"""Exceptions shared by the command line tools."""

from __future__ import annotations

#: How the Python API names the option that lets an existing output be replaced.
API_OVERWRITE = "overwrite=True"


class InputError(ValueError):
    """Bad user input (a missing file, a wrong argument): the CLI prints it and exits with code 2."""


class OverwriteRefused(InputError):
    """An existing output that only ``overwrite`` may replace.

    The message is made here once, ``"<what>; pass <option> to replace it"``, and names the option as the
    caller spells it: the Python API's ``overwrite=True`` by default; a command line re-raises
    :meth:`spelled` with its flag.

        >>> str(OverwriteRefused("/raw/Dataset201_Synapse already exists"))
        '/raw/Dataset201_Synapse already exists; pass overwrite=True to replace it'
        >>> str(OverwriteRefused("/raw/Dataset201_Synapse already exists").spelled("--overwrite"))
        '/raw/Dataset201_Synapse already exists; pass --overwrite to replace it'
    """

    def __init__(self, what: str, option: str = API_OVERWRITE) -> None:
        super().__init__(f"{what}; pass {option} to replace it")
        self.what = what
        self.option = option

    def spelled(self, option: str) -> OverwriteRefused:
        """The same refusal, naming ``option`` (e.g. ``--overwrite``)."""
        return OverwriteRefused(self.what, option)

    def __reduce__(self) -> tuple:
        return type(self), (self.what, self.option)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs; the CLI exits with 143
    (128 + 15) instead of 130."""


def interrupt_exit_code(interrupt: KeyboardInterrupt) -> int:
    """The shell's exit code of an interrupted command: 128 + the signal number (130 SIGINT, 143 SIGTERM)."""
    return 143 if isinstance(interrupt, Terminated) else 130
