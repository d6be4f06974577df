"""Typed errors. Each carries a short machine code and a sentence a user understands.

The web layer maps these to HTTP status codes in one place; the CLI prints them and goes on.
"""

from __future__ import annotations


class ASRError(Exception):
    """Base class of every error the product raises on purpose."""

    code = "asr_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class AudioError(ASRError):
    """The input is not audio we can decode, or it is empty, corrupt, non-finite or too long."""

    code = "invalid_audio"


class HotwordError(ASRError):
    """The hotword list breaks a limit (count, length) or is malformed."""

    code = "invalid_hotwords"


class ModelLoadError(ASRError):
    """The model could not be found, downloaded or loaded."""

    code = "model_load_failed"


class LimitError(ASRError):
    """The input is over a configured limit (upload size, duration, files per job)."""

    code = "limit_exceeded"


class QueueFullError(ASRError):
    """The scheduler's queue is full; the client should retry later."""

    code = "queue_full"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
