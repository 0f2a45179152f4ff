"""The one exception type that reaches users as a message instead of a traceback."""


class UserError(Exception):
    """A problem with the user's input, files or environment, explained in plain words.

    The command line prints the message and exits with status 2; the app shows it in its
    window. Raise it with everything the user needs to fix the problem (which file, what was
    expected, what to run)."""


def listed(items) -> str:
    """`a`, `a and b`, `a, b and c`: lists inside messages."""
    items = [str(item) for item in items]
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)
