"""Audio decoding: any file or bytes a user sends in, float32 16 kHz mono out, as a stream.

Mono is the mean of the channels. `open_audio(..., channels="split")` keeps them apart instead
(two-channel call recordings: one speaker per channel): the same decoders then yield
[frames, channels] blocks, resampled together.

`open_audio` reads the header (length, rate) and then decodes on demand, block by block, so a
long or heavily compressed file never sits in memory decoded whole: a 4-hour 8 kHz mp3 of 14 MB
would be 920 MB as float32 at 16 kHz. `decode_audio` joins the blocks for callers that want one
array (short files, tests).

16-bit PCM WAV, what recorders and scripts send most, is read by the standard library's `wave`
and converted by numpy (libsndfile reads from memory through Python callbacks, which under a busy
server's GIL cost more than the decoding). soundfile (libsndfile) reads the other WAV/FLAC/OGG/AIFF
variants quickly and exactly; everything else (mp3, m4a/aac, webm/opus, ...) goes through PyAV,
whose wheel ships FFmpeg's decoders, so no system ffmpeg is needed. Resampling uses soxr (the SoX
resampler, 'HQ') as a stream, which gives the same samples as resampling the whole file at once;
audio already at 16 kHz is never resampled.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import soundfile as sf
import soxr

from asr.errors import ASRError, AudioError, LimitError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

SAMPLE_RATE = 16000
BYTES_PER_SECOND = SAMPLE_RATE * 4  # decoded float32 mono audio
# Sample rates accepted from headers: telephone-band up to studio rates.
MIN_RATE = 1000
MAX_RATE = 384000
# Seconds of source audio per decoded block: small enough that a block of any rate is a few MB,
# large enough that per-block overhead (VAD, resampling) stays negligible.
BLOCK_S = 10.0

# Containers libsndfile reads, by their first bytes: a file that starts like one but cannot be
# opened is damaged (400), not an unknown format (415).
_CONTAINER_MAGIC = {b"RIFF": "WAV", b"fLaC": "FLAC", b"OggS": "Ogg", b"FORM": "AIFF"}

# A decoded block's message tag in `decode_to`'s pipe: four bytes, so the float32 samples after it
# stay aligned and are copied out once.
_DATA = b"D\0\0\0"

AudioSource = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO
ChannelMode = Literal["mix", "split"]


class AudioStream:
    """An opened recording: its length from the header (when the format states one) and its
    samples, decoded on demand as float32 16 kHz blocks by `blocks()`: mono, or with `split`
    (`open_audio(..., channels="split")`) [frames, channels] arrays.

    Decoding errors surface from `blocks()` as `AudioError`/`LimitError`; a truncated tail keeps
    what decoded, as players do. Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        rate: int,
        duration_s: float | None,
        source_blocks: Iterator[np.ndarray],
        close: Callable[[], None],
        max_duration_s: float | None,
        channels: int = 1,
        split: bool = False,
    ) -> None:
        self.rate = rate
        self.channels = channels
        """Channels in the source (as its header says)."""
        self.split = split
        """Blocks keep the channels apart ([frames, channels]) instead of mixing them."""
        self.duration_s = duration_s
        """Length stated by the header (an estimate for compressed formats), None if unknown."""
        self._source_blocks = source_blocks
        self._close = close
        self._limit = None if max_duration_s is None else int(max_duration_s * rate) + 1
        self._max_duration_s = max_duration_s
        self.samples = 0
        """16 kHz samples yielded so far."""

    def blocks(self) -> Iterator[np.ndarray]:
        """The audio as float32 16 kHz blocks (about `BLOCK_S` seconds each): mono, or
        [frames, channels] when the stream was opened with channels="split"."""
        resampler = (
            None if self.rate == SAMPLE_RATE
            else soxr.ResampleStream(self.rate, SAMPLE_RATE, self.channels if self.split else 1,
                                     dtype="float32", quality="HQ")
        )  # fmt: skip
        source_total = 0
        for block in self._source_blocks:
            source_total += len(block)
            if self._limit is not None and source_total > self._limit:
                raise _too_long(self._max_duration_s)
            if not np.isfinite(block).all():
                if np.isnan(block).any():
                    raise AudioError("The audio contains NaN sample values.", code="non_finite_audio")
                raise AudioError("The audio contains infinite sample values.", code="non_finite_audio")
            out = block if resampler is None else resampler.resample_chunk(block, last=False)
            if len(out):
                self.samples += len(out)
                yield np.ascontiguousarray(out, dtype=np.float32)
        if resampler is not None and source_total:
            empty = np.zeros((0, self.channels) if self.split else 0, np.float32)
            tail = resampler.resample_chunk(empty, last=True)
            if len(tail):
                self.samples += len(tail)
                yield np.ascontiguousarray(tail, dtype=np.float32)
        if self.samples == 0:
            raise AudioError("The audio contains no samples.", code="empty_audio")

    def close(self) -> None:
        self._close()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, after the stream's own close (the first `close()` only)."""
        close, called = self._close, False

        def close_then_callback() -> None:
            nonlocal called
            try:
                close()
            finally:
                if not called:
                    called = True
                    callback()

        self._close = close_then_callback

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_audio(
    source: AudioSource, *, max_duration_s: float | None = None, channels: ChannelMode = "mix"
) -> AudioStream:
    """Open `source` (bytes, a path or a seekable binary file object) for streamed decoding.

    `channels`: "mix" yields mono blocks (the channels' mean), "split" [frames, channels] blocks.
    Raises AudioError for empty or undecodable input and LimitError when the header already says
    the audio is longer than `max_duration_s` (a longer stream is refused while it decodes).
    """
    split = channels == "split"
    handle, owned = _open_source(source)
    # libsndfile and FFmpeg read a path natively; a file object costs a Python callback per read.
    name = str(source) if isinstance(source, (str, os.PathLike)) else None
    try:
        size = _size(handle)
        if size == 0:
            raise AudioError("The file is empty: it contains no bytes.", code="empty_file")
        magic = handle.read(4)
        # MP3 goes to PyAV: libsndfile decodes it through libmpg123, which writes its complaints
        # about damaged frames straight to the process's stderr ("Note: Illegal Audio-MPEG-Header").
        mpeg = _looks_like_mpeg(magic)
        openers = (_open_wav_pcm16, _open_av) if mpeg else (_open_wav_pcm16, _open_soundfile, _open_av)
        for opener in openers:
            handle.seek(0)
            try:
                stream = opener(handle if opener is _open_wav_pcm16 or name is None else name, size, max_duration_s,
                                split)
            except AudioError as exc:
                if exc.code == "unsupported_format" and magic in _CONTAINER_MAGIC:
                    # The container is one we know (its magic says so): it is damaged, not foreign.
                    raise AudioError(
                        f"The {_CONTAINER_MAGIC[magic]} audio file is damaged: its header could not be read.",
                        code="corrupt_audio",
                    ) from exc
                raise
            if stream is not None:
                if owned:
                    stream._close = lambda inner=stream._close: (inner(), handle.close())
                return stream
        raise AssertionError("unreachable: the PyAV opener never returns None")
    except BaseException:
        if owned:
            handle.close()
        raise


def end_with_parent(parent: int) -> None:
    """A decoding process's initializer: it ends when its parent is gone. Killed outright (the
    OOM killer, SIGKILL), the parent leaves its pool's processes waiting on a queue that every
    one of them also holds open, so none ever reads its end: they stayed, ~70 MB each."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="asr-parent-watch", daemon=True).start()


def ready_to_decode() -> None:
    """Run once in each new decoding process: FFmpeg's bindings imported before the first
    recording needs them (~0.2-0.5 s a process, paid while the models load)."""
    import av  # noqa: F401


def decode_clip(source: bytes | str, up_to_s: float, max_duration_s: float | None) -> np.ndarray | None:
    """A short recording decoded whole, or None when it is longer than `up_to_s` (the caller then
    streams it). Run in the pipeline's decoding processes: compressed formats decode in C while
    holding the GIL, so a folder of mp3 clips decodes on every core only in processes."""
    stream = open_audio(source, max_duration_s=max_duration_s)
    try:
        blocks: list[np.ndarray] = []
        held = 0
        for block in stream.blocks():
            blocks.append(block)
            held += len(block)
            if held > up_to_s * SAMPLE_RATE:
                return None
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    finally:
        stream.close()


def decode_to(source: bytes | str, conn: Any, max_duration_s: float | None) -> None:
    """Decode `source` into the pipe `conn` (run in a decoding process, for a long compressed
    recording): a header, then float32 16 kHz mono blocks, then an empty message; an error as
    its own message. The pipe's small buffer paces the decoding to the reader; a reader that
    goes away ends it."""
    try:
        try:
            stream = open_audio(source, max_duration_s=max_duration_s)
        except ASRError as exc:
            conn.send_bytes(b"E" + pickle.dumps(exc))
            return
        try:
            conn.send_bytes(b"H" + pickle.dumps((stream.duration_s, stream.channels)))
            for block in stream.blocks():
                conn.send_bytes(_DATA + block.tobytes())
            conn.send_bytes(b"")
        except ASRError as exc:
            conn.send_bytes(b"E" + pickle.dumps(exc))
        finally:
            stream.close()
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the request ended (cancelled, refused): nothing is waiting for the rest
    finally:
        conn.close()


def stream_from(conn: Any, max_duration_s: float | None) -> AudioStream:
    """The reading end of `decode_to`: an `AudioStream` whose blocks arrive through `conn`
    (receiving releases the GIL; the decoding holds another process's)."""
    kind, payload = _receive(conn)
    if kind == b"E":
        conn.close()
        raise pickle.loads(payload)
    if kind != b"H":
        conn.close()
        raise AudioError("The decoding process sent no header.", code="corrupt_audio")
    duration_s, channels = pickle.loads(payload)

    def blocks() -> Iterator[np.ndarray]:
        while True:
            kind, payload = _receive(conn)
            if kind == b"":
                return
            if kind == b"E":
                raise pickle.loads(payload)
            yield payload  # a block: its float32 samples (`_receive`)

    return AudioStream(SAMPLE_RATE, duration_s, blocks(), conn.close, max_duration_s, channels)


def _receive(conn: Any) -> tuple[bytes, Any]:
    """(kind, payload); a block's payload is its float32 array, copied once out of the message
    (slicing the kind off first would copy 640 KB once more, under this process's GIL)."""
    try:
        message = conn.recv_bytes()
    except (EOFError, OSError) as exc:
        raise AudioError("The decoding process ended before the audio did.", code="corrupt_audio") from exc
    if message[:4] == _DATA:  # the 4-byte tag keeps the samples aligned
        return b"D", np.frombuffer(message, dtype=np.float32, offset=4).copy()  # writable, like every block
    return message[:1], message[1:]


def widen_pipe(conn: Any) -> None:
    """Let the pipe hold a whole block (640 KB; Linux pipes hold 64 KB by default): each block is
    then one write and one read instead of ten of each, every read taking the reader's GIL back
    once more (Linux only; elsewhere the default stays)."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is not None:
        with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: the default stays
            fcntl.fcntl(conn.fileno(), set_size, 1 << 20)


def is_wav(head: bytes) -> bool:
    return head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE"


def decode_audio(source: AudioSource, *, max_duration_s: float | None = None) -> np.ndarray:
    """Decode `source` (bytes, a path or a binary file object) to one float32 mono 16 kHz array.

    Raises AudioError for empty, undecodable, truncated or non-finite input and LimitError when the
    audio is longer than `max_duration_s`.
    """
    with open_audio(source, max_duration_s=max_duration_s) as stream:
        blocks = list(stream.blocks())
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def duration_s(audio: np.ndarray) -> float:
    """Length in seconds of a decoded 16 kHz array."""
    return len(audio) / SAMPLE_RATE


def _open_source(source: AudioSource) -> tuple[BinaryIO, bool]:
    """A seekable binary handle for `source`, and whether we opened it (and must close it)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), True
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise AudioError(f"No such audio file: {path.name}", code="file_not_found")
        return open(path, "rb"), True  # noqa: SIM115 - closed by the stream
    if not source.seekable():
        return io.BytesIO(source.read()), True
    return source, False


def _size(handle: BinaryIO) -> int:
    handle.seek(0, io.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    return size


def _too_long(max_duration_s: float | None) -> LimitError:
    return LimitError(
        f"The audio is longer than the limit of {max_duration_s:g} seconds (limits.max_audio_s).",
        code="audio_too_long",
    )


def _check_rate(rate: int) -> None:
    # A header's sample rate scales the work: 1 Hz audio would be resampled 16000-fold.
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(
            f"The audio's sample rate of {rate} Hz is not supported ({MIN_RATE} to {MAX_RATE} Hz).",
            code="bad_header",
        )


def _layout(block: np.ndarray, split: bool) -> np.ndarray:
    """[frames, channels] -> the channels averaged ([frames]), or kept apart with `split`."""
    if split:
        return np.ascontiguousarray(block, dtype=np.float32)
    return block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]


def _open_wav_pcm16(
    handle: BinaryIO, size: int, max_duration_s: float | None, split: bool = False
) -> AudioStream | None:
    """Plain 16-bit PCM WAV, or None for anything else (soundfile then reads or diagnoses it).
    Samples equal libsndfile's float32 reading (int / 32768)."""
    head = handle.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    if int.from_bytes(head[4:8], "little") + 8 != size:
        # A RIFF size that disagrees with the bytes (streamed or truncated files): libsndfile
        # reads what is there, `wave` stops at the stated size. Leave those to libsndfile.
        return None
    handle.seek(0)
    try:
        # "rb" explicitly: without it `wave` takes the mode from the file object, and a spooled
        # upload (mode "w+b") is refused.
        wav = wave.open(handle, "rb")  # noqa: SIM115 - closed by the stream
    except (wave.Error, EOFError, ValueError):
        return None
    try:
        if wav.getsampwidth() != 2 or wav.getcomptype() != "NONE" or wav.getnchannels() < 1:
            wav.close()
            return None
        rate, channels = wav.getframerate(), wav.getnchannels()
        _check_rate(rate)
        # The data present: the header's length, clamped to the bytes there.
        frames = min(wav.getnframes(), size // (2 * channels))
    except (wave.Error, EOFError, ValueError):
        wav.close()
        return None
    except ASRError:
        wav.close()
        raise
    if frames == 0:
        wav.close()
        return None  # soundfile says why (no data at all)
    if max_duration_s is not None and frames > int(max_duration_s * rate) + 1 + 64:
        wav.close()
        raise _too_long(max_duration_s)
    step = max(1, int(BLOCK_S * rate))

    def blocks() -> Iterator[np.ndarray]:
        while raw := wav.readframes(step):
            n = len(raw) // (2 * channels)
            if n == 0:
                break
            pcm = np.frombuffer(raw, dtype="<i2", count=n * channels).reshape(n, channels)
            yield _layout(pcm.astype(np.float32) * np.float32(1 / 32768), split)

    return AudioStream(rate, frames / rate, blocks(), wav.close, max_duration_s, channels, split)


def _looks_like_mpeg(head: bytes) -> bool:
    """An ID3 tag or an MPEG audio frame header at the start (mp3, mp2)."""
    return head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


def _open_soundfile(
    handle: BinaryIO | str, size: int, max_duration_s: float | None, split: bool = False
) -> AudioStream | None:
    try:
        snd = sf.SoundFile(handle)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None  # not a container libsndfile knows: PyAV gets a try
    if snd.format == "MP3":  # found further in (a junk prefix): PyAV as well
        snd.close()
        return None
    try:
        rate = snd.samplerate
        if rate <= 0:
            raise AudioError("The audio header gives an invalid sample rate.", code="bad_header")
        _check_rate(rate)
        # libsndfile clamps a header's length to the data really present, so a file whose header
        # says it is too long is refused before any decoding (a 2-hour upload costs nothing).
        # Unknown lengths are reported as huge values and are left to the block count.
        known = 0 < snd.frames < 2**62
        if known and max_duration_s is not None and snd.frames > int(max_duration_s * rate) + 1:
            raise _too_long(max_duration_s)
    except BaseException:
        snd.close()
        raise
    step = max(1, int(BLOCK_S * rate))

    def blocks() -> Iterator[np.ndarray]:
        decoded = False
        while True:
            try:
                block = snd.read(step, dtype="float32", always_2d=True)
            except sf.LibsndfileError as exc:
                if not decoded:
                    raise AudioError(f"The audio data could not be decoded ({exc}).", code="corrupt_audio") from exc
                return  # a truncated tail: keep what decoded
            if not len(block):
                return
            decoded = True
            yield _layout(block, split)

    return AudioStream(rate, snd.frames / rate if known else None, blocks(), snd.close, max_duration_s,
                       snd.channels, split)


# FFmpeg's demuxers accept odd streams (no sample rate, zero channels, broken layouts) that PyAV
# then fails to describe; for the user it is the same undecodable file.
_AV_ODDITIES = (AttributeError, TypeError, ValueError, IndexError, KeyError, OverflowError, RuntimeError)


def _open_av(handle: BinaryIO | str, size: int, max_duration_s: float | None, split: bool = False) -> AudioStream:
    import av  # imported lazily: only compressed formats need FFmpeg

    try:
        container = av.open(handle, mode="r")
    except (av.error.FFmpegError, *_AV_ODDITIES) as exc:
        raise AudioError(
            "The file is not a recognised audio format (tried WAV/FLAC/OGG and FFmpeg's decoders).",
            code="unsupported_format",
        ) from exc
    try:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise AudioError("The file contains no audio stream.", code="no_audio_stream")
        stream = streams[0]
        rate = stream.rate or stream.codec_context.sample_rate
        if not rate:
            raise AudioError("The audio stream has no sample rate.", code="bad_header")
        _check_rate(rate)
        channels = max(1, len(stream.layout.channels)) if stream.layout is not None else 1
        estimate = None
        if stream.duration is not None and stream.time_base is not None:
            estimate = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            estimate = container.duration / 1_000_000  # microseconds (AV_TIME_BASE)
    except ASRError:
        container.close()
        raise
    except _AV_ODDITIES as exc:
        container.close()
        raise AudioError(f"The audio data could not be decoded ({type(exc).__name__}).", code="corrupt_audio") from exc
    step = max(1, int(BLOCK_S * rate))
    # Codec frames are small (an mp3 frame is 576-1,152 samples, 50,000 an hour), and turning
    # each into arrays cost twice FFmpeg's own decoding: frames of one kind are gathered as raw
    # bytes and converted a block at a time, with the same arithmetic per sample.
    group = _FrameGroup(channels, split)

    def converted(frame: Any) -> np.ndarray:
        # A frame at another rate than the stream's (a mid-stream change) is resampled alone.
        single = _FrameGroup(channels, split)
        single.add(frame)
        return soxr.resample(single.take(), frame.sample_rate, rate, quality="HQ")

    def blocks() -> Iterator[np.ndarray]:
        pending: list[np.ndarray] = []
        held = 0
        decoded = False
        source = _frames(container, stream)
        while True:
            try:
                try:
                    frame = next(source)
                except StopIteration:
                    break
                except av.error.FFmpegError as exc:
                    if not decoded and not pending and not group.samples:
                        raise AudioError(f"The audio data could not be decoded ({exc}).", code="corrupt_audio") from exc
                    break  # a truncated tail: keep what decoded
                if frame.sample_rate and frame.sample_rate != rate:
                    if group.samples:
                        pending.append(group.take())
                    part = converted(frame)
                    pending.append(part)
                    held += len(part)
                else:
                    if not group.add(frame):  # another format: what the group holds goes first
                        pending.append(group.take())
                        group.add(frame)
                    held += frame.samples
                if held >= step:
                    if group.samples:
                        pending.append(group.take())
                    decoded = True
                    yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                    pending, held = [], 0
            except _AV_ODDITIES as exc:
                raise AudioError(
                    f"The audio data could not be decoded ({type(exc).__name__}).", code="corrupt_audio"
                ) from exc
        try:
            if group.samples:
                pending.append(group.take())
        except _AV_ODDITIES as exc:
            raise AudioError(
                f"The audio data could not be decoded ({type(exc).__name__}).", code="corrupt_audio"
            ) from exc
        if pending:
            yield pending[0] if len(pending) == 1 else np.concatenate(pending)
        elif not decoded:
            raise AudioError("The file contains no decodable audio.", code="corrupt_audio")

    def close() -> None:
        with contextlib.suppress(Exception):
            container.close()

    return AudioStream(rate, estimate, blocks(), close, max_duration_s, channels, split)


# FFmpeg's sample formats as numpy types ("p": planar, one plane per channel).
_AV_DTYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "s64": np.int64, "flt": np.float32,
              "dbl": np.float64}


class _FrameGroup:
    """Decoded frames of one sample format and channel count, held as their planes' bytes until
    `take()` converts them together: float32, ints scaled to [-1, 1], channels averaged (mono) or
    [frames, channels] (`split`)."""

    def __init__(self, channels: int, split: bool) -> None:
        self.channels = channels
        self.split = split
        self.samples = 0
        self._kind: tuple[str, int] | None = None
        self._bytes = 0  # per sample, all channels of a plane
        self._planes: list[list[Any]] = []

    def add(self, frame: Any) -> bool:
        """Hold `frame`; False (nothing held) when the group holds frames of another kind. Per
        frame only cheap attributes are read (`layout.channels` builds a tuple: 1.6 us, 50,000
        times an hour of mp3)."""
        layout = frame.layout
        kind = (frame.format.name, getattr(layout, "nb_channels", None) or len(layout.channels))
        if kind != self._kind:
            if self.samples:
                return False
            self._kind = kind
            self._bytes = frame.format.bytes * (1 if frame.format.is_planar else kind[1])
            self._planes = [[] for _ in frame.planes]
        width = self._bytes * frame.samples
        for held, plane in zip(self._planes, frame.planes, strict=True):
            held.append(memoryview(plane)[:width])
        self.samples += frame.samples
        return True

    def take(self) -> np.ndarray:
        assert self._kind is not None
        name, n_channels = self._kind
        planar = name.endswith("p")
        dtype = _AV_DTYPES[name.rstrip("p")]
        planes = [np.frombuffer(b"".join(views), dtype=dtype) for views in self._planes]
        block = np.stack(planes) if planar else planes[0]
        self._planes = [[] for _ in self._planes]
        self.samples = 0
        if block.dtype.kind in "iu":
            info = np.iinfo(block.dtype)
            block = block.astype(np.float32) / float(max(abs(info.min), info.max))
        block = block.astype(np.float32, copy=False)
        if self.split:
            if n_channels != self.channels:
                raise AudioError(
                    f"The audio changes from {self.channels} to {n_channels} channels mid-stream; it cannot be "
                    "split by channel.", code="corrupt_audio",
                )
            out = block.T if planar else block.reshape(-1, n_channels)
        elif n_channels == 1:
            out = block.reshape(-1)  # mono: no mixing (most speech files)
        elif planar:
            out = block.mean(axis=0)
        else:
            out = block.reshape(-1, n_channels).mean(axis=1)
        return np.ascontiguousarray(out, dtype=np.float32)


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
