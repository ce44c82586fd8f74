"""The one exception type that means "the user gave us something wrong".

The CLI turns a ``UserError`` into a single line on stderr and exit code 2; anything else is a bug and
keeps its traceback. Library users can catch it to tell their mistakes from ours.
"""


class UserError(Exception):
    """Bad input from the user: a missing path, malformed data, an unknown config key, ..."""


class ItemsFailed(Exception):
    """Some work items failed every try: recorded with their errors, never scored as wrong, left out of selection
    and held-out statistics while the run went on. The CLI prints this one line and exits with code 3."""

    def __init__(self, failures: list[dict], where: str):
        self.failures = failures
        names = ", ".join(f["key"] for f in failures[:5]) + (f" and {len(failures) - 5} more" if len(failures) > 5 else "")
        super().__init__(f"{len(failures)} item(s) failed after every try ({names}); their errors are in {where}; "
                         "the run went on without them")
