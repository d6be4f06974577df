"""Audio decoding: any file or bytes a user sends in, float32 16 kHz mono out.

16-bit PCM WAV, what recorders and scripts send most, is read by the standard library's `wave`
and converted by numpy in one pass (libsndfile reads from memory through Python callbacks, which
under a busy server's GIL cost more than the decoding). soundfile (libsndfile) reads the other
WAV/FLAC/OGG/AIFF variants quickly and exactly; everything else (mp3, m4a/aac, webm/opus, ...)
goes through PyAV, whose wheel ships FFmpeg's decoders, so no system ffmpeg is needed.
Resampling uses soxr (the SoX resampler, 'HQ'): band-limited, phase-linear and fast, and audio
already at 16 kHz is never resampled.
"""

from __future__ import annotations

import io
import os
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import soxr

from asr.errors import ASRError, AudioError, LimitError

SAMPLE_RATE = 16000
# Sample rates accepted from headers: telephone-band up to studio rates.
MIN_RATE = 1000
MAX_RATE = 384000
# Decode in blocks so a header that lies about its length cannot make us allocate gigabytes.
_BLOCK_FRAMES = 1 << 18

AudioSource = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO


def decode_audio(source: AudioSource, *, max_duration_s: float | None = None) -> np.ndarray:
    """Decode `source` (bytes, a path or a binary file object) to float32 mono at 16 kHz.

    Raises AudioError for empty, undecodable, truncated or non-finite input and LimitError when the
    audio is longer than `max_duration_s`.
    """
    data = _read_source(source)
    if not data:
        raise AudioError("The file is empty: it contains no bytes.", code="empty_file")
    decoded = _decode_wav_pcm16(data, max_duration_s)
    if decoded is None:
        try:
            decoded = _decode_soundfile(data, max_duration_s)
        except _NotForSoundfile:
            decoded = _decode_av(data, max_duration_s)
    return _finish(*decoded)


def duration_s(audio: np.ndarray) -> float:
    """Length in seconds of a decoded 16 kHz array."""
    return len(audio) / SAMPLE_RATE


def _read_source(source: AudioSource) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise AudioError(f"No such audio file: {path.name}", code="file_not_found")
        return path.read_bytes()
    return source.read()


class _NotForSoundfile(Exception):
    """libsndfile does not know the container; PyAV gets a try."""


def _too_long(max_duration_s: float | None) -> LimitError:
    return LimitError(
        f"The audio is longer than the limit of {max_duration_s:g} seconds (limits.max_audio_s).",
        code="audio_too_long",
    )


def _decode_wav_pcm16(data: bytes, max_duration_s: float | None) -> tuple[np.ndarray, int] | None:
    """Plain 16-bit PCM WAV, or None for anything else (soundfile then reads or diagnoses it).
    Samples equal libsndfile's float32 reading (int / 32768); a truncated data chunk keeps what is
    there, as libsndfile does."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    if int.from_bytes(data[4:8], "little") + 8 != len(data):
        # A RIFF size that disagrees with the bytes (streamed or truncated files): libsndfile
        # reads what is there, `wave` stops at the stated size. Leave those to libsndfile.
        return None
    try:
        with wave.open(io.BytesIO(data)) as wav:
            if wav.getsampwidth() != 2 or wav.getcomptype() != "NONE" or wav.getnchannels() < 1:
                return None
            rate, channels = wav.getframerate(), wav.getnchannels()
            _check_rate(rate)
            limit = None if max_duration_s is None else int(max_duration_s * rate) + 1
            # Refused from the header before any copy when the data present (the header's
            # length, clamped to the bytes there) is clearly over the limit.
            if limit is not None and min(wav.getnframes(), len(data) // (2 * channels)) > limit + 64:
                raise _too_long(max_duration_s)
            raw = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError, ValueError):
        return None
    frames = len(raw) // (2 * channels)
    if limit is not None and frames > limit:
        raise _too_long(max_duration_s)
    if frames == 0:
        return None  # soundfile says why (no data at all)
    pcm = np.frombuffer(raw, dtype="<i2", count=frames * channels).reshape(frames, channels)
    samples = pcm.astype(np.float32) * np.float32(1 / 32768)
    return (samples.mean(axis=1, dtype=np.float32) if channels > 1 else samples[:, 0]), rate


def _looks_like_mpeg(data: bytes) -> bool:
    """An ID3 tag or an MPEG audio frame header at the start (mp3, mp2)."""
    return data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)


def _decode_soundfile(data: bytes, max_duration_s: float | None) -> tuple[np.ndarray, int]:
    # MP3 goes to PyAV: libsndfile decodes it through libmpg123, which writes its complaints
    # about damaged frames straight to the process's stderr ("Note: Illegal Audio-MPEG-Header").
    if _looks_like_mpeg(data):
        raise _NotForSoundfile
    try:
        handle = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise _NotForSoundfile from exc
    if handle.format == "MP3":  # found further in (a junk prefix): PyAV as well
        handle.close()
        raise _NotForSoundfile
    with handle:
        rate = handle.samplerate
        if rate <= 0:
            raise AudioError("The audio header gives an invalid sample rate.", code="bad_header")
        _check_rate(rate)
        limit = None if max_duration_s is None else int(max_duration_s * rate) + 1
        # libsndfile clamps a header's length to the data really present, so a file whose header
        # says it is too long is refused before any decoding (a 2-hour upload costs nothing).
        # Unknown lengths are reported as huge values and are left to the block count below.
        if limit is not None and limit < handle.frames < 2**62:
            raise _too_long(max_duration_s)
        blocks: list[np.ndarray] = []
        total = 0
        try:
            while True:
                block = handle.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if not len(block):
                    break
                blocks.append(block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0])
                total += len(block)
                if limit is not None and total > limit:
                    raise _too_long(max_duration_s)
        except sf.LibsndfileError as exc:
            if not blocks:
                raise AudioError(
                    f"The audio data could not be decoded ({exc}).", code="corrupt_audio"
                ) from exc
            # A truncated tail: keep what decoded, as players do.
    samples = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    return samples, rate


def _decode_av(data: bytes, max_duration_s: float | None) -> tuple[np.ndarray, int]:
    try:
        return _decode_av_unchecked(data, max_duration_s)
    except ASRError:
        raise
    except (AttributeError, TypeError, ValueError, IndexError, KeyError, OverflowError, RuntimeError) as exc:
        # FFmpeg's demuxers accept odd streams (no sample rate, zero channels, broken layouts)
        # that PyAV then fails to describe; for the user it is the same undecodable file.
        raise AudioError(
            f"The audio data could not be decoded ({type(exc).__name__}).", code="corrupt_audio"
        ) from exc


def _check_rate(rate: int) -> None:
    # A header's sample rate scales the work: 1 Hz audio would be resampled 16000-fold.
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(
            f"The audio's sample rate of {rate} Hz is not supported ({MIN_RATE} to {MAX_RATE} Hz).",
            code="bad_header",
        )


def _decode_av_unchecked(data: bytes, max_duration_s: float | None) -> tuple[np.ndarray, int]:
    import av  # imported lazily: only compressed formats need FFmpeg

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise AudioError(
            "The file is not a recognised audio format (tried WAV/FLAC/OGG and FFmpeg's decoders).",
            code="unsupported_format",
        ) from exc
    with container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise AudioError("The file contains no audio stream.", code="no_audio_stream")
        stream = streams[0]
        rate = stream.rate or stream.codec_context.sample_rate
        if not rate:
            raise AudioError("The audio stream has no sample rate.", code="bad_header")
        _check_rate(rate)
        limit = None if max_duration_s is None else int(max_duration_s * rate) + 1
        blocks: list[np.ndarray] = []
        total = 0
        try:
            for frame in _frames(container, stream):
                block = frame.to_ndarray()
                if block.dtype.kind in "iu":
                    info = np.iinfo(block.dtype)
                    block = block.astype(np.float32) / float(max(abs(info.min), info.max))
                block = block.astype(np.float32, copy=False)
                if frame.format.is_planar:
                    mono = block.mean(axis=0)
                else:
                    mono = block.reshape(-1, len(frame.layout.channels)).mean(axis=1)
                if frame.sample_rate and frame.sample_rate != rate:
                    mono = soxr.resample(mono, frame.sample_rate, rate, quality="HQ")
                blocks.append(mono.astype(np.float32, copy=False))
                total += len(mono)
                if limit is not None and total > limit:
                    raise _too_long(max_duration_s)
        except av.error.FFmpegError as exc:
            if not blocks:
                raise AudioError(
                    f"The audio data could not be decoded ({exc}).", code="corrupt_audio"
                ) from exc
    if not blocks:
        raise AudioError("The file contains no decodable audio.", code="corrupt_audio")
    return np.concatenate(blocks), rate


def _frames(container: Any, stream: Any) -> Iterator[Any]:
    """Decoded frames of ``stream``; a packet the decoder rejects (a damaged mp3 frame) is
    skipped, as players do, instead of ending the file there."""
    import av

    # demux() ends with an empty packet, whose decode() flushes the frames the decoder holds.
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue


def _finish(samples: np.ndarray, rate: int) -> np.ndarray:
    if samples.size == 0:
        raise AudioError("The audio contains no samples.", code="empty_audio")
    if not np.isfinite(samples).all():
        raise AudioError("The audio contains NaN or infinite sample values.", code="non_finite_audio")
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(samples, dtype=np.float32)
