"""The one exception type for bad input: the CLI turns it into `error: ...` and exit 2."""


class InputError(Exception):
    """A problem with what the user gave us (spec, flags, weights file, data, cluster).

    The message is a single line that names what is wrong and how to fix it.
    """
