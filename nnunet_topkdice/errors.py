"""Exceptions shared by the command line tools."""


class InputError(ValueError):
    """Bad user input (a missing file, a wrong argument): the CLI prints it and exits with code 2."""
