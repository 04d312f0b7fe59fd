"""User-facing errors: the CLI prints their message as one line and exits with status 2."""


class UsageError(ValueError):
    """Bad input from the user (unknown id, wrong type, missing file...).

    The message must be one line that names the problem and how to fix it.
    """
