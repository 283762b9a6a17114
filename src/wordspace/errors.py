"""The one error type users see: a message naming the input and the fix."""

from collections.abc import Iterator
from contextlib import contextmanager


class WordspaceError(ValueError):
    """Bad input or state that the user can fix; the CLI prints it as one line and exits 2."""


@contextmanager
def errors_prefixed(prefix: str) -> Iterator[None]:
    """Re-raise a `WordspaceError` of the block with ``prefix`` before its message (to name, say,
    the models behind a metric's arguments)."""
    try:
        yield
    except WordspaceError as error:
        raise WordspaceError(f"{prefix}{error}") from None
