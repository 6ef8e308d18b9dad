"""The one exception type for bad input: the CLI turns it into `error: ...` and exit 2; and the
argument parser every entry point uses, whose own errors are bad input too."""

import argparse


class InputError(Exception):
    """A problem with what the user gave us (spec, flags, weights file, data, cluster).

    The message is a single line that names what is wrong and how to fix it.
    """


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose own errors (an unknown flag, a bad value) are InputError, so that they end
    as every other bad input does: one `error: ...` line, exit 2. Its usage line names the command
    as the user typed it: `tuner X` when the `tuner` command runs it (`command`), else the
    module's own `python -m tuner.X`."""

    command: str | None = None  # set by tuner.cli for the subcommand it runs

    def __init__(self, *args, prog: str | None = None, **kwargs):
        super().__init__(*args, prog=ArgumentParser.command or prog, **kwargs)

    def error(self, message: str) -> None:
        raise InputError(message)
