"""Errors the studio reports to the user as one line, never as a traceback."""


class StudioError(Exception):
    """A problem the user can act on; str(error) is the one-line reason shown to them."""


class LoadError(StudioError):
    """A model file that cannot, or must not, be loaded."""


class TrustRequired(LoadError):
    """Loading would unpickle, i.e. run code from the file; the user must opt in."""


class Cancelled(StudioError):
    """The user cancelled a running job."""

    def __init__(self, message: str = "cancelled by the user"):
        super().__init__(message)


def one_line(text: object, limit: int = 400) -> str:
    """`text` as the one line a user is shown: line breaks (from a file's own names or a library's
    message) and runs of spaces become one space, and a very long text is cut."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
