"""The one exception type that means "the user gave us something wrong".

The CLI turns a ``UserError`` into a single line on stderr and exit code 2; anything else is a bug and
keeps its traceback. Library users can catch it to tell their mistakes from ours.
"""


class UserError(Exception):
    """Bad input from the user: a missing path, malformed data, an unknown config key, ..."""
