"""The one error type users see: a message naming the input and the fix."""


class WordspaceError(ValueError):
    """Bad input or state that the user can fix; the CLI prints it as one line and exits 2."""
