"""User-facing errors. The CLI prints them as one line and exits with code 2."""


class MonkeyError(Exception):
    """Bad input, a bad model/engine directory, or an environment that cannot run the request."""


class EngineDirError(MonkeyError):
    """The engine directory is missing, corrupt, altered or of another schema version."""


class BackendUnavailable(MonkeyError):
    """The requested backend (TensorRT, CUDA, ...) is not installed or has no device here."""
