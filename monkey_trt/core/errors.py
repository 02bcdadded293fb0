"""User-facing errors. The CLI prints them as one line and exits with code 2."""


class MonkeyError(Exception):
    """Bad input, a bad model/engine directory, or an environment that cannot run the request."""


class EngineDirError(MonkeyError):
    """The engine directory is missing, corrupt, altered or of another schema version."""


class BackendUnavailable(MonkeyError):
    """The requested backend (TensorRT, CUDA, ...) is not installed or has no device here."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty): one-line errors."""
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
