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


class NonFiniteOutput(MonkeyError):
    """A stage of the method produced NaN or inf (a broken engine: e.g. 8-bit scales that are NaN). The service
    answers it with a 5xx naming the stage (the request was fine; the engine is not)."""

    def __init__(self, backend: str, stage: str, detail: str = ""):
        self.stage = stage
        super().__init__(f"{backend}: the {stage} stage produced non-finite values (NaN/inf){detail}: the engine is "
                         "broken (re-export it, or run it with --precision fp32)")
