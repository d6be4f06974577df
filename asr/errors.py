"""Every error the product raises on purpose, with its machine code, and the one table that maps
codes to HTTP statuses.

An error carries a short `code` (stable, for scripts) and a sentence a user understands. A class
has a default code; a raise site may name a more precise one (`AudioError(..., code="empty_file")`),
which must be listed in `HTTP_STATUS`, so no error reaches a client without a status chosen on
purpose. The web layer reads `http_status(exc)`; the CLI prints the message and goes on.
"""

from __future__ import annotations

from typing import Any

# code -> HTTP status. One row per code any ASRError may carry.
HTTP_STATUS: dict[str, int] = {
    "asr_error": 500,
    # The input audio
    "invalid_audio": 400,
    "empty_file": 400,
    "empty_audio": 400,
    "corrupt_audio": 400,
    "bad_header": 400,
    "non_finite_audio": 400,
    "file_not_found": 400,
    "unsupported_format": 415,  # not audio the decoders know: a media-type problem
    "no_audio_stream": 415,
    # What a request asks for
    "invalid_hotwords": 422,
    "too_many_hotword_sets": 422,
    "unknown_hotword_set": 422,
    "invalid_options": 422,
    "invalid_vad_options": 422,
    "invalid_punc_options": 422,
    "invalid_speaker_options": 422,
    "invalid_subtitles": 500,  # we produced subtitles players would reject: our bug
    # Limits
    "limit_exceeded": 413,
    "audio_too_long": 413,
    "no_files": 422,
    # Capacity: worth retrying later
    "queue_full": 503,
    "busy": 503,
    "out_of_memory": 503,
    "request_timeout": 504,
    # Live recognition over WebSocket (docs/live.md); each also has a close code in WS_CLOSE
    "invalid_live_message": 400,
    "invalid_live_config": 400,
    "message_too_big": 413,
    "live_too_fast": 429,
    "live_idle": 408,
    "live_too_long": 413,
    "live_not_reading": 408,
    "too_many_connections": 503,
    # Lookups and access
    "token_required": 403,
    "job_not_found": 404,
    "hotword_set_not_found": 404,
    "hotword_set_exists": 409,
    "invalid_request": 400,
    # The server's own state
    "model_load_failed": 503,
    "itn_unavailable": 503,
    "invalid_config": 500,
    "engine_error": 500,
}


# code -> WebSocket close code for the live endpoint (RFC 6455 section 7.4.1). A code missing here
# closes with 1008 (policy violation) for a client's fault, 1013 (try again later) for a 503 and
# 1011 (internal error) for other server faults (`ws_close_code`).
WS_CLOSE: dict[str, int] = {
    "invalid_live_config": 1007,  # inconsistent data: not JSON, a field of the wrong type or value
    "non_finite_audio": 1007,
    "message_too_big": 1009,
    "too_many_connections": 1013,
}


class ASRError(Exception):
    """Base class of every error the product raises on purpose."""

    code = "asr_error"
    retry_after_s: float | None = None
    """Set on capacity errors: what a client is told to wait before retrying (503 Retry-After)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            if code not in HTTP_STATUS:
                raise ValueError(f"error code {code!r} has no HTTP status in asr.errors.HTTP_STATUS")
            self.code = code

    @property
    def message(self) -> str:
        return str(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (decoding in a process pool) with their code intact.
        return (_rebuild_error, (type(self), str(self), self.code), dict(self.__dict__))


def _rebuild_error(cls: type[ASRError], message: str, code: str) -> ASRError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.code = code
    return exc


def http_status(exc: ASRError) -> int:
    """The HTTP status of a typed error (500 for a code missing from the table)."""
    return HTTP_STATUS.get(exc.code, 500)


def ws_close_code(exc: ASRError) -> int:
    """The WebSocket close code that ends a live connection for this error."""
    if exc.code in WS_CLOSE:
        return WS_CLOSE[exc.code]
    if isinstance(exc, AudioError):
        return 1007  # audio that cannot be decoded: inconsistent data
    status = http_status(exc)
    if status == 503:
        return 1013
    return 1011 if status >= 500 else 1008


# ---- input ----------------------------------------------------------------------------------


class AudioError(ASRError):
    """The input is not audio we can decode, or it is empty, corrupt or non-finite."""

    code = "invalid_audio"


class HotwordError(ASRError):
    """The hotword list breaks a limit (count, length) or is malformed."""

    code = "invalid_hotwords"


class OptionsError(ASRError, ValueError):
    """Request options that cannot work (or together)."""

    code = "invalid_options"


class VadOptionsError(OptionsError):
    """VAD options that cannot work together."""

    code = "invalid_vad_options"


class PuncOptionsError(OptionsError):
    """Punctuation options that cannot work."""

    code = "invalid_punc_options"


class SpeakerOptionsError(OptionsError):
    """Speaker options that cannot work together."""

    code = "invalid_speaker_options"


class SubtitleError(ASRError, ValueError):
    """A subtitle file that players would reject (bad numbering, times or text)."""

    code = "invalid_subtitles"


# ---- limits and capacity --------------------------------------------------------------------


class LimitError(ASRError):
    """The input is over a configured limit (upload size, duration, files per job)."""

    code = "limit_exceeded"


class QueueFullError(ASRError):
    """The scheduler's queue is full; the client should retry later."""

    code = "queue_full"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BusyError(ASRError):
    """The memory budget for decoded audio stayed full for longer than a request may wait."""

    code = "busy"

    def __init__(self, message: str, *, retry_after_s: float = 2.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineOverloadedError(ASRError):
    """The device ran out of memory on this input; worth retrying later."""

    code = "out_of_memory"
    retry_after_s = 5.0


class LiveProtocolError(ASRError):
    """A live (WebSocket) client broke the protocol: audio before its configuration, a message
    that is not JSON, or a configuration that cannot work (`code="invalid_live_config"`)."""

    code = "invalid_live_message"


class RequestTimeoutError(ASRError):
    """A synchronous request took longer than ``limits.request_timeout_s``."""

    code = "request_timeout"


# ---- lookups and the server's own state -----------------------------------------------------


class InvalidRequestError(ASRError):
    """A request parameter that cannot be read (a page cursor that is not ours)."""

    code = "invalid_request"


class ArchiveRequestError(ASRError):
    """A download names no job, or a job more than once."""

    code = "invalid_request"


class TokenRequiredError(ASRError):
    """An administrative route (listing every job, changing hotword sets) on a service that other
    machines can reach and that has no `server.api_token`."""

    code = "token_required"


class JobNotFoundError(ASRError):
    """No job has this id (or it was removed)."""

    code = "job_not_found"


class HotwordSetNotFoundError(ASRError):
    """No hotword set has this name (the sets API; a transcription naming an unknown set gets
    `OptionsError` with code `unknown_hotword_set`)."""

    code = "hotword_set_not_found"


class HotwordSetExistsError(ASRError):
    """A hotword set with this name exists already (create it with another name, or replace it)."""

    code = "hotword_set_exists"


class ModelLoadError(ASRError):
    """The model could not be found, downloaded or loaded."""

    code = "model_load_failed"


class ITNUnavailableError(ASRError, RuntimeError):
    """Inverse text normalization was asked for but its library (wetext) is not installed."""

    code = "itn_unavailable"


class ConfigError(ASRError):
    """A settings file or value is invalid."""

    code = "invalid_config"


class EngineFailedError(ASRError):
    """The engine raised an unexpected error on this input; it is logged."""

    code = "engine_error"


class EngineRestartedError(EngineFailedError):
    """The engine's process died during the call and was started again: nothing says the input
    caused it (a kill, a fault elsewhere), so the scheduler runs the call once more before this
    reaches a client."""


def engine_failure(exc: BaseException) -> ASRError:
    """The typed error a client sees for an unexpected engine exception."""
    if _is_out_of_memory(exc):
        return EngineOverloadedError(
            "The GPU ran out of memory on this file. Retry in a moment, or send a shorter file."
        )
    return EngineFailedError(f"Recognition failed on this file ({type(exc).__name__}: {str(exc)[:200]}).")


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the engine
        return False
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def all_error_classes() -> list[type[ASRError]]:
    """ASRError and every subclass defined anywhere in the product (for tests and docs)."""
    out: list[type[ASRError]] = []
    todo: list[type[ASRError]] = [ASRError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out
