"""The one pipeline every door calls: decode -> segments -> engine (via the scheduler) ->
punctuation, inverse text normalization, corrections, sentences, speakers -> `Result`.

A recording is decoded as a stream (`asr.pipeline.audio.open_audio`) and cut into segments as it
decodes: by the VAD, or, with VAD off, only where a clip would be too long (at quiet points).
Each segment is submitted to the one batching scheduler as soon as it is cut, so segments of
every file in flight share the engine's batches, and the decoded audio a request holds is bounded
by its reservation in the global `AudioBudget`, whatever the recording's length. The blocking
steps (decoding, VAD, punctuation, speaker embeddings) run on the pipeline's own worker threads;
the event loop only awaits them and the scheduler.

With channels="split" each channel of the recording is cut into segments of its own (one decoder,
one segmenter per channel fed in step) and recognised in the same batches; its words carry the
channel's name as their speaker and the channels' sentences are merged on one timeline. With
hotword_diff each clip is submitted twice, with and without the hotwords, side by side in the
queue, so both land in the same engine batch.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import dataclasses
import difflib
import itertools
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, TypeVar

import numpy as np

from asr.errors import ASRError, AudioError, BusyError, LimitError, OptionsError, engine_failure
from asr.pipeline.audio import (
    BLOCK_S,
    BYTES_PER_SECOND,
    SAMPLE_RATE,
    AudioSource,
    AudioStream,
    decode_clip,
    decode_to,
    end_with_parent,
    is_wav,
    open_audio,
    ready_to_decode,
    stream_from,
    widen_pipe,
)
from asr.pipeline.corrections import correct
from asr.pipeline.hotwords import find_hotwords
from asr.pipeline.models import StageModels
from asr.pipeline.options import Options
from asr.pipeline.pieces import PieceStream, plan_pieces
from asr.pipeline.punc import SENTENCE_END, PuncOptions, Punctuator
from asr.pipeline.result import (
    Applied,
    CorrectionHit,
    DiffSpan,
    HotwordHit,
    HotwordSetUse,
    Notice,
    Result,
    Segment,
    Token,
)
from asr.pipeline.speakers import (
    SpeakerOptions,
    SpeakerWindow,
    cluster_speakers,
    majority_speaker,
    speaker_name,
    windows,
)
from asr.pipeline.subtitles import (
    Sentence,
    SubtitleOptions,
    TimedWord,
    group_sentences,
    join_words,
    sentence_offsets,
    to_text,
    word_offsets,
    words_from_tokens,
)
from asr.pipeline.vad import Segment as VadSegment
from asr.pipeline.vad import SegmentFeed, SpeechChunk, VadOptions, WholeAudio
from asr.runtime import own_process, usable_cores
from asr.service.scheduler import NORMAL, BatchStats, Scheduler, SchedulerOptions
from asr.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


# Awaited with each segment's own Result as a streamed recording's segments finish.
SegmentCallback = Callable[[Result], Awaitable[None]]

# Results up to this many tokens (about two minutes of speech) are assembled on the event loop.
_INLINE_WORDS = 600


class EngineLike(Protocol):
    """What the pipeline needs from `asr.engine.Engine`."""

    def transcribe(self, audios: Sequence[np.ndarray], hotwords: Any = None) -> list[Any]: ...

    def info(self) -> dict[str, Any]: ...


class TranscriptLike(Protocol):
    """What the pipeline reads from the engine's `Transcript`."""

    text: str
    tokens: list[str]
    timestamps: list[tuple[int, int]]


def scheduler_options(settings: Settings, engines: int = 1) -> SchedulerOptions:
    """How the one scheduler in front of the engine batches, from the settings. `engines`: how
    many engines one call is split among (a CPU pool, asr/engine/pool.py), each of which gets
    batches of up to `engine.max_batch_size`."""
    return SchedulerOptions(
        max_batch_size=settings.engine.max_batch_size * engines,
        max_wait_ms=settings.server.batch_wait_ms,
        max_queue=settings.limits.max_queue,
    )


class AudioBudget:
    """Bytes of decoded audio that may be held at once, handed out first come, first served.

    The service has one for all requests (`limits.decoded_audio_mb`); each request has one for
    its own segments in flight. Use from one event loop.
    """

    def __init__(self, total_bytes: int) -> None:
        self.total = max(1, int(total_bytes))
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def free(self) -> int:
        return self.total - self.used

    async def acquire(self, nbytes: int, timeout: float | None = None) -> int:
        """Take `nbytes` (at most the whole budget); waits while others hold it. Raises BusyError
        after `timeout` seconds (None waits as long as it takes). Returns what was taken."""
        nbytes = min(max(0, int(nbytes)), self.total)
        if not self._waiters and self.used + nbytes <= self.total:
            self.used += nbytes
            return nbytes
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            if future.done() and not future.cancelled():
                return nbytes  # granted as the wait ran out: keep it
            self._waiters.remove(entry)
            self._wake()
            raise BusyError(
                "The server is decoding as much audio as its memory budget allows "
                "(limits.decoded_audio_mb). Please retry in a moment. 服务器繁忙，请稍后重试。"
            ) from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(nbytes)
            elif entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()
            raise
        return nbytes

    def try_acquire(self, nbytes: int) -> int:
        """Take up to `nbytes` that are free now, without waiting (0 while others wait)."""
        if nbytes <= 0 or self._waiters:
            return 0
        taken = min(nbytes, self.total - self.used)
        self.used += max(taken, 0)
        return max(taken, 0)

    def release(self, nbytes: int) -> None:
        self.used -= nbytes
        self._wake()

    def _wake(self) -> None:
        # First come, first served: a large request at the head is not overtaken by small ones.
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            nbytes, future = self._waiters.popleft()
            if future.done():
                continue
            self.used += nbytes
            future.set_result(None)


@dataclass
class _Part:
    """One segment, what the engine heard in it, and its speaker windows."""

    segment: Segment
    transcript: TranscriptLike
    speaker_spans: list[SpeakerWindow]
    speaker_embeddings: np.ndarray | None
    channel: int = 0
    """The channel it was cut from (channels='split'); 0 for the mixed recording."""
    plain: TranscriptLike | None = None
    """What the engine heard without the hotwords (hotword_diff)."""
    words: list[TimedWord] = dataclasses.field(default_factory=list)
    """`segment_words` of the transcript, made as the segment finishes: a long recording's
    assembly, which waits for its last segment, then only punctuates and groups (an hour of
    speech is ~40,000 words)."""


class _Source:
    """A stream opened for one request; its blocking steps run one at a time on worker threads
    (a decoder must not be closed while another thread reads from it)."""

    def __init__(self, stream: AudioStream) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.chunks: Iterator[tuple[int, SpeechChunk]] | None = None
        """(channel, segment) as they are cut."""

    def next_chunk(self) -> tuple[int, SpeechChunk] | None:
        with self.lock:
            assert self.chunks is not None
            return next(self.chunks, None)

    def close(self) -> None:
        with self.lock:
            self.stream.close()


def decode_process_count(settings: Settings) -> int:
    """`pipeline.decode_processes`, with -1 resolved: in a process of its own (the command line,
    the server) half the usable cores, at least 1 and at most 16; else 0 (a user's script may
    lack the main-module guard that spawning needs).

    At least one even on a small machine: PyAV gives up the GIL around every packet it decodes,
    and taking it back waits out the switch interval whenever another thread runs Python, so a
    decoding thread beside a busy event loop crawls (a 30 s mp3 here: 27 ms alone, 17 s beside
    one spinning thread; two decoding threads make fewer files a second than one)."""
    processes = settings.pipeline.decode_processes
    if processes < 0:
        processes = min(16, max(1, usable_cores() // 2)) if own_process() else 0
    return processes


def start_decoders(settings: Settings) -> ProcessPoolExecutor | None:
    """The decoding processes (None when there are none), every one of them starting now: a pool
    starts a process per task while none is idle, and a long file's first pieces would wait for
    several to import FFmpeg's bindings at once (~0.2-0.5 s each). One small task each starts
    them all; a caller that starts them before loading the models gets them for free."""
    processes = decode_process_count(settings)
    if not processes:
        return None
    # Spawned, not forked: the process has CUDA and threads running.
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=end_with_parent, initargs=(os.getpid(),))
    for _ in range(processes):
        pool.submit(ready_to_decode)
    return pool


class Pipeline:
    """Recordings in, `Result`s out, for every door. Owns the scheduler in front of the engine,
    the VAD / punctuation / speaker models, the decoded-audio budget and the worker threads."""

    def __init__(
        self,
        settings: Settings,
        engine: EngineLike,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
        models: StageModels | None = None,
        scheduler: Any = None,
        decoders: ProcessPoolExecutor | None = None,
    ) -> None:
        self.settings = settings
        self._subtitles = subtitle_options(settings)
        self.engine = engine
        # `scheduler`: one with `Scheduler`'s interface that lives elsewhere (an HTTP worker's
        # link to the batching process, asr/service/front.py); by default this pipeline's own.
        self.scheduler: Scheduler[Any] = scheduler or Scheduler(
            engine.transcribe, scheduler_options(settings, getattr(engine, "engines", 1)), sample_rate=SAMPLE_RATE,
            on_batch=on_batch,
        )
        # Passed in when they were loading while the engine loaded (the CLI's cold start).
        self.models = models or StageModels(settings.longform, settings.engine.model_cache)
        self.budget = AudioBudget(int(settings.limits.decoded_audio_mb * 1048576))
        self._workers = ThreadPoolExecutor(settings.pipeline.workers, thread_name_prefix="asr-pipeline")
        self._whole = WholeAudio()
        longform = settings.longform
        self._vad_opts = VadOptions(
            max_segment_s=longform.max_segment_s,
            min_segment_s=min(longform.min_segment_s, longform.max_segment_s),
            merge_gap_s=longform.merge_gap_s,
        )
        self._whole_opts = WholeAudio.options(settings.engine.max_clip_s)
        self._window_s = longform.group_s
        # `decoders`: a pool of `start_decoders` the caller started earlier (the CLI starts it
        # while the models load) and shuts down; by default this pipeline starts its own.
        self._decoders: ProcessPoolExecutor | None = decoders
        self._decoders_given = decoders is not None
        self._decode_processes = 0
        self.decoded_in_pieces = 0
        """Recordings decoded in pieces by several decoding processes at once."""
        self._long_decodes = 0
        """Long recordings being decoded by the decoding processes now (a stream may be closed
        on a worker thread: changed under `_long_lock`)."""
        self._long_lock = threading.Lock()
        self.decoded_in_processes = 0
        """Recordings the decoding processes decoded (the rest streamed in the threads)."""

    # ---- life cycle --------------------------------------------------------------------------

    async def start(self, *, warmup: bool = False) -> None:
        """Start the scheduler; optionally push one clip through it (CUDA modules, allocator)."""
        await self.scheduler.start()
        if self._decoders is None and not self._decoders_given:
            self._decoders = start_decoders(self.settings)
        if self._decoders is not None:
            self._decode_processes = decode_process_count(self.settings)
            log.info("compressed audio is decoded in %d processes (pipeline.decode_processes)",
                     self._decode_processes)
        # The models every request uses load now, not in the first request (ITN's grammars take
        # ~0.2 s, a punctuation model seconds); a missing one is reported once, here.
        if self.settings.pipeline.itn:
            await self._run(self.models.itn)
        if self.settings.longform.punc_model:
            await self._run(self.models.punctuator)
        if warmup:
            noise = np.random.default_rng(0).normal(0, 0.01, SAMPLE_RATE).astype(np.float32)
            t0 = time.perf_counter()
            await self.scheduler.submit(noise, ())
            log.info("warm-up transcription took %.2f s", time.perf_counter() - t0)

    async def stop(self) -> None:
        await self.scheduler.stop()
        self._workers.shutdown(wait=False, cancel_futures=True)
        if self._decoders is not None and not self._decoders_given:
            self._decoders.shutdown(wait=False, cancel_futures=True)

    def options(self, **form: Any) -> Options:
        """`Options.from_form` with this service's hotword limits."""
        limits = self.settings.limits
        return Options.from_form(**form, max_hotwords=limits.max_hotwords, max_hotword_chars=limits.max_hotword_chars)

    # ---- one recording -----------------------------------------------------------------------

    async def transcribe(
        self,
        source: AudioSource | AudioStream,
        options: Options | None = None,
        *,
        background: bool = False,
        on_segment: SegmentCallback | None = None,
    ) -> Result:
        """Transcribe one recording (bytes, a path, a binary file object, or an opened stream).

        `background=True` (batch jobs, the CLI) waits for room in the decoded-audio budget and in
        a full scheduler queue; otherwise a request that cannot get room within
        `limits.budget_wait_s` fails with BusyError (503) and a full queue with QueueFullError.

        `on_segment` (streamed responses) is awaited with each segment's own `Result` (that
        segment alone, punctuated and normalised as a recording of its own would be) in the
        order of the recording, as soon as it and every segment before it are recognised; the
        returned `Result` is the whole recording's, as without it.
        """
        options = options or Options()
        if not options.sets_resolved:
            raise OptionsError(
                "Hotword sets must be resolved into words before transcription (the service does it; "
                "in Python, HotwordSetStore.resolve)."
            )
        t0 = time.perf_counter()
        wait = None if background else self.settings.limits.budget_wait_s
        channels = 1
        if options.channels == "split":
            # The channel count scales every reservation, so the header is read first.
            if not isinstance(source, AudioStream):
                source = await self._run(open_audio, source, max_duration_s=self.settings.limits.max_audio_s,
                                         channels="split")
            channels = self._split_channels(source)
        # First, room for the longest single clip: a short recording is then decoded whole, a
        # long one starts streaming.
        try:
            held = await self.budget.acquire(self._first_reservation(options) * channels, wait)
        except BaseException:
            if isinstance(source, AudioStream) and options.channels == "split":
                source.close()
            raise
        src: _Source | None = None
        whole: list[tuple[int, SpeechChunk]] | None = None
        try:
            if self._decoders is not None and options.channels != "split" and not isinstance(source, AudioStream):
                source = await self._decode_elsewhere(source, self._first_seconds(options))
            src, use_vad, whole = await self._run(self._open, source, options)
            if whole is not None:
                # The first channel's clip may be refused by a full queue; the others then wait
                # (as a stream's later segments do), so an accepted call is not failed halfway.
                clips = [asyncio.ensure_future(self._part(chunk, options, background or k > 0, c))
                         for k, (c, chunk) in enumerate(whole)]
                try:
                    parts = list(await asyncio.gather(*clips))
                except BaseException:
                    for clip in clips:  # a refused first channel: the others are not worth the GPU
                        clip.cancel()
                    await asyncio.gather(*clips, return_exceptions=True)
                    raise
                if on_segment is not None:
                    for part in parts:
                        await on_segment(await self.segment_result(part, options, use_vad, t0))
            else:
                # Streaming: the window grows to the recording's length or `longform.group_s`
                # where the budget has room now (waiting for more could deadlock with others).
                held += self.budget.try_acquire(self._window_bytes(src.stream.duration_s) * channels - held)
                parts = await self._recognise(src, options, held, background, on_segment, use_vad, t0)
        finally:
            self.budget.release(held)
            if src is not None and whole is None:
                # On the worker threads, after any hop still running there: a decoder is never
                # closed while another thread reads from it.
                with contextlib.suppress(RuntimeError):  # the pool is shut down: the process ends
                    self._workers.submit(src.close)
        if self._assembles_quickly(parts, options):
            # Pure Python of a few milliseconds: on a worker it would only fight the event loop
            # for the GIL (the loop then waited in every other request's thread hand-off).
            return self._assemble(parts, src.stream.samples, options, use_vad, t0)
        return await self._run(self._assemble, parts, src.stream.samples, options, use_vad, t0)

    def _split_channels(self, stream: AudioStream) -> int:
        """Channels a split recording has, within `limits.max_split_channels`."""
        channels = stream.channels if stream.split else 1
        limit = self.settings.limits.max_split_channels
        if channels > limit:
            stream.close()
            raise LimitError(
                f"The recording has {channels} channels; channels='split' takes at most {limit} "
                "(limits.max_split_channels)."
            )
        return channels

    def _assembles_quickly(self, parts: list[_Part], options: Options) -> bool:
        """No model to run (punctuation, speakers) and few words: assembling is cheaper than a
        hand-off to a worker thread."""
        if options.speakers or (options.punctuation and self.models.punctuator() is not None):
            return False
        return sum(len(p.transcript.tokens or ()) for p in parts) <= _INLINE_WORDS

    def _first_seconds(self, options: Options) -> float:
        """The longest clip this request can need at once: a whole short recording (VAD on
        'auto' decides by the first `auto_vad_s`), or a segment."""
        longform, engine = self.settings.longform, self.settings.engine
        vad = self._uses_vad(options)
        if vad is None:
            return max(longform.auto_vad_s, engine.max_clip_s)
        return longform.max_segment_s if vad else engine.max_clip_s

    def _first_reservation(self, options: Options) -> int:
        """Bytes for `_first_seconds`, plus one decoded block."""
        return int((self._first_seconds(options) + BLOCK_S) * BYTES_PER_SECOND)

    async def _decode_elsewhere(self, source: AudioSource, up_to_s: float) -> AudioSource | AudioStream:
        """A compressed recording decoded by a decoding process: a small one whole (a stream of
        one block), a file on disk larger than `pipeline.decode_process_max_mb` or longer than
        `up_to_s` streamed back through a pipe; larger bytes and uploads through a temporary file
        (removed when the stream closes). A WAV comes back as it was: it is read here, as is
        anything when no temporary file can be written. The audio is the same either way: the
        same code decodes it."""
        max_bytes = int(self.settings.pipeline.decode_process_max_mb * 1048576)
        data, small, spilled = await self._run(_decodable_input, source, max_bytes)
        if data is None:
            return source
        if not small:
            try:
                stream = await self._stream_elsewhere(data)
            except BaseException:
                if spilled:
                    _remove(spilled)
                raise
            if spilled:
                if not isinstance(stream, AudioStream):
                    _remove(spilled)  # no decoding processes after all: the source is read here
                    return source
                stream.on_close(lambda: _remove(spilled))
            return stream
        try:
            audio = await asyncio.get_running_loop().run_in_executor(
                self._decoders, decode_clip, data, up_to_s, self.settings.limits.max_audio_s
            )
        except BrokenProcessPool:
            self._decoding_broke()
            return source
        if audio is None:
            # Longer than it looked: it streams from a decoding process after all.
            return await self._stream_elsewhere(data)
        self.decoded_in_processes += 1
        return blocks_stream([audio], duration_s=len(audio) / SAMPLE_RATE)

    async def _stream_elsewhere(self, data: bytes | str) -> AudioSource | AudioStream:
        """A long compressed recording decoded by the decoding processes as it is read (PyAV
        holds the GIL while it decodes, ~1.2 s per hour of mp3, which ten long files at once
        spent here in turn): in pieces by all of them when no other long recording is decoding
        (one file then waits on no single process), otherwise streamed back by one process
        through a pipe (several files fill the processes anyway, and one finishing early lets its
        assembly overlap the others' decoding; with pieces of all ten shared out in turn, ten
        60-min files ended together and took 18.8 s against 13.1 s before pieces, H200 boxes)."""
        if self._decoders is None:  # broken meanwhile
            return data
        with self._long_lock:
            alone = self._long_decodes == 0
            self._long_decodes += 1  # taken before the plan's wait: files arriving together see it

        def ended() -> None:
            with self._long_lock:
                self._long_decodes -= 1

        try:
            stream = (await self._stream_in_pieces(data) if alone else None) or await self._stream_through_pipe(data)
        except BaseException:
            ended()
            raise
        if not isinstance(stream, AudioStream):
            ended()
            return stream

        stream.on_close(ended)
        return stream

    async def _stream_through_pipe(self, data: bytes | str) -> AudioSource | AudioStream:
        """The recording decoded by one decoding process, its blocks sent through a pipe."""
        if self._decoders is None:
            return data
        reader, writer = multiprocessing.get_context("spawn").Pipe(duplex=False)
        widen_pipe(reader)
        try:
            job = self._decoders.submit(decode_to, data, writer, self.settings.limits.max_audio_s)
        except (BrokenProcessPool, RuntimeError):
            reader.close()
            writer.close()
            self._decoding_broke()
            return data
        # This process's copy of the writing end is closed once the job has ended (it is sent
        # to the process after submit returns): a process that dies then leaves the reader EOF.
        job.add_done_callback(lambda done: _finish_job(done, writer))
        try:
            # Waited for here, not on a worker thread: with more long recordings than decoding
            # processes, the ones queued for a process held every thread while those decoding
            # needed one to be read (ten 60-min files in a worker of 2 decoding processes and 8
            # threads waited forever).
            await _readable(reader)
            stream = await self._run(stream_from, reader, self.settings.limits.max_audio_s)
        except AudioError:
            reader.close()
            if job.done() and isinstance(job.exception(), BrokenProcessPool):
                self._decoding_broke()
                return data  # nothing was read yet: it decodes here instead
            raise
        except BaseException:
            reader.close()
            raise
        self.decoded_in_processes += 1
        return stream

    async def _stream_in_pieces(self, data: bytes | str) -> AudioStream | None:
        """A long mp3 on disk decoded by several decoding processes at once, in pieces of
        `pipeline.decode_piece_s` (asr/pipeline/pieces.py); None where it decodes in one."""
        settings = self.settings.pipeline
        if not isinstance(data, str) or settings.decode_piece_s <= 0 or self._decode_processes < 2:
            return None
        max_audio_s = self.settings.limits.max_audio_s
        try:
            plan = await asyncio.get_running_loop().run_in_executor(
                self._decoders, plan_pieces, data, settings.decode_piece_s, settings.decode_pieces_from_s, max_audio_s
            )
        except (BrokenProcessPool, RuntimeError):
            self._decoding_broke()
            return None
        if plan is None or self._decoders is None:
            return None
        self.decoded_in_processes += 1
        self.decoded_in_pieces += 1
        return PieceStream(self._decoders, plan, self._decode_processes, max_audio_s).stream

    def _decoding_broke(self) -> None:
        if self._decoders is not None:
            log.warning("a decoding process died; decoding in threads from now on")
            self._decoders.shutdown(wait=False, cancel_futures=True)
            self._decoders = None

    def _window_bytes(self, duration_s: float | None) -> int:
        """A streaming recording's segments in flight: its length when the header says, at most
        `longform.group_s`."""
        seconds = self._window_s if duration_s is None else min(duration_s + BLOCK_S, self._window_s)
        return int(seconds * BYTES_PER_SECOND)

    @staticmethod
    def _uses_vad(options: Options) -> bool | None:
        """Whether the options decide VAD (None: by the recording's length)."""
        return True if options.speakers else options.vad

    def _open(
        self, source: AudioSource | AudioStream, options: Options
    ) -> tuple[_Source, bool, list[tuple[int, SpeechChunk]] | None]:
        """Open the recording, decide VAD and either decode it whole (a short recording without
        VAD: one clip per channel, returned) or set up its segment stream. One worker hop for a
        short file."""
        if isinstance(source, AudioStream):
            stream = source
        else:
            stream = open_audio(source, max_duration_s=self.settings.limits.max_audio_s, channels=options.channels)
        src = _Source(stream)
        split = options.channels == "split"
        try:
            blocks = stream.blocks()
            if split:
                # [frames, channels] blocks (a mono stream handed in as such is one channel).
                blocks = (b if b.ndim == 2 else b[:, None] for b in blocks)
            use_vad = self._uses_vad(options)
            head: list[np.ndarray] = []
            if use_vad is not True:
                # Read up to the length that decides: 'auto' takes VAD past auto_vad_s; without
                # VAD, a recording up to max_clip_s is one clip.
                limit_s = self.settings.longform.auto_vad_s if use_vad is None else self.settings.engine.max_clip_s
                held = 0
                ended = True
                for block in blocks:
                    head.append(block)
                    held += len(block)
                    if held > limit_s * SAMPLE_RATE:
                        ended = False
                        break
                if ended and held <= self.settings.engine.max_clip_s * SAMPLE_RATE:
                    stream.close()
                    audio = head[0] if len(head) == 1 else np.concatenate(head)
                    if not split:
                        return src, False, [(0, SpeechChunk(VadSegment(0, len(audio)), audio))]
                    return src, False, [(c, SpeechChunk(VadSegment(0, len(audio)), np.ascontiguousarray(audio[:, c])))
                                        for c in range(audio.shape[1])]
                use_vad = use_vad is None  # 'auto' and longer than auto_vad_s: VAD
            source_blocks = itertools.chain(head, blocks)
            segmenter = self.models.vad() if use_vad else self._whole
            opts = self._vad_opts if use_vad else self._whole_opts
            if split:
                src.chunks = _split_chunks(source_blocks, lambda: segmenter.feed(opts))
            else:
                src.chunks = ((0, chunk) for chunk in segmenter.stream(source_blocks, opts))
            return src, use_vad, None
        except BaseException:
            stream.close()
            raise

    async def _recognise(
        self,
        src: _Source,
        options: Options,
        window_bytes: int,
        background: bool,
        on_segment: SegmentCallback | None = None,
        use_vad: bool = True,
        t0: float = 0.0,
    ) -> list[_Part]:
        """Submit segments as the stream yields them; at most `window_bytes` of them in flight.
        With `on_segment`, each finished segment is handed on in order by a task of its own."""
        window = AudioBudget(window_bytes)
        tasks: list[asyncio.Task[_Part]] = []
        in_order: asyncio.Queue[asyncio.Task[_Part] | None] = asyncio.Queue()

        async def part(channel: int, chunk: SpeechChunk, taken: int, wait: bool) -> _Part:
            try:
                return await self._part(chunk, options, wait, channel)
            finally:
                window.release(taken)

        async def hand_on(callback: SegmentCallback) -> None:
            while (task := await in_order.get()) is not None:
                await callback(await self.segment_result(await task, options, use_vad, t0))

        emitter = asyncio.create_task(hand_on(on_segment)) if on_segment is not None else None
        try:
            while True:
                item = await self._run(src.next_chunk)
                if item is None:
                    break
                channel, chunk = item
                taken = await window.acquire(chunk.audio.nbytes)
                # Only the first segment of an interactive request may be refused by a full
                # queue (503 before any work); once accepted, the rest waits for room like
                # background work, so recognised segments are never thrown away.
                tasks.append(asyncio.create_task(part(channel, chunk, taken, background or bool(tasks))))
                in_order.put_nowait(tasks[-1])
                for task in tasks:
                    if task.done() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if emitter is not None and emitter.done():
                    emitter.result()  # the callback failed (the client went away): stop here
            parts = list(await asyncio.gather(*tasks))
            if emitter is not None:
                in_order.put_nowait(None)
                await emitter
            return parts
        except BaseException:
            for task in [*tasks, *([emitter] if emitter is not None else [])]:
                task.cancel()
            await asyncio.gather(*tasks, *([emitter] if emitter is not None else []), return_exceptions=True)
            raise

    async def segment_result(self, part: _Part, options: Options, use_vad: bool = True, t0: float = 0.0) -> Result:
        """One recognised segment as a `Result` of its own: punctuated, normalised and cut into
        sentences exactly as a recording holding only that segment's audio would be (times stay
        on the recording's timeline)."""
        parts = [part]
        samples = part.segment.end_ms * SAMPLE_RATE // 1000
        if self._assembles_quickly(parts, options):
            return self._assemble(parts, samples, options, use_vad, t0)
        return await self._run(self._assemble, parts, samples, options, use_vad, t0)

    async def transcribe_segment(
        self,
        chunk: SpeechChunk,
        options: Options,
        *,
        background: bool = True,
        priority: int = NORMAL,
        on_recognised: Callable[[], None] | None = None,
    ) -> Result:
        """Recognise one segment cut elsewhere (a live stream's VAD) and assemble it as
        `segment_result` does. `background=True` waits for room in a full scheduler queue: the
        segment is never dropped. `priority`: the scheduler's (a live caption's final is URGENT).
        `on_recognised` is called when the engine's part is done, before assembly."""
        t0 = time.perf_counter()
        part = await self._part(chunk, options, background, priority=priority)
        if on_recognised is not None:
            on_recognised()
        return await self.segment_result(part, options, True, t0)

    async def _part(
        self, chunk: SpeechChunk, options: Options, background: bool, channel: int = 0, priority: int = NORMAL
    ) -> _Part:
        plain = None
        try:
            if options.hotword_diff and options.hotwords:
                # Both queued in one step, side by side: they share an engine batch. If one
                # fails, the other is withdrawn (a cancelled wait is skipped by the scheduler).
                both = [asyncio.ensure_future(self.scheduler.submit(chunk.audio, words, block=background,
                                                                    priority=priority))
                        for words in (options.hotwords, ())]
                try:
                    transcript, plain = await asyncio.gather(*both)
                except BaseException:
                    for task in both:
                        task.cancel()
                    raise
            else:
                transcript = await self.scheduler.submit(
                    chunk.audio, options.hotwords, block=background, priority=priority
                )
        except ASRError:
            raise
        except Exception as exc:  # noqa: BLE001 - engine failures become typed, logged errors
            log.error("engine failed on a %.1f s segment: %r", chunk.segment.duration_s, exc)
            raise engine_failure(exc) from exc
        spans: list[SpeakerWindow] = []
        embeddings = None
        if options.speakers:
            spans, embeddings = await self._run(self._embed, chunk, self._speaker_options(options))
        segment = Segment(chunk.segment.start_ms, chunk.segment.end_ms)
        return _Part(segment, transcript, spans, embeddings, channel, plain, segment_words(segment, transcript))

    def _speaker_options(self, options: Options) -> SpeakerOptions:
        longform = self.settings.longform
        return SpeakerOptions(
            n_speakers=options.num_speakers,
            max_speakers=max(longform.max_speakers, options.num_speakers or 1),
            threshold=longform.speaker_threshold,
        )

    def _embed(self, chunk: SpeechChunk, opts: SpeakerOptions) -> tuple[list[SpeakerWindow], np.ndarray]:
        """Speaker embeddings of one segment's windows (small; the audio is not kept)."""
        spans, clips = windows(chunk.audio, chunk.segment.start_sample, opts)
        return spans, self.models.embedder().embed(clips)

    def _assemble(
        self, parts: list[_Part], samples: int, options: Options, use_vad: bool, t0: float
    ) -> Result:
        """Words -> punctuation -> ITN -> corrections -> sentences -> speakers -> Result, each
        channel on its own with channels='split' (then merged on one timeline)."""
        split = options.channels == "split"
        channels = sorted({p.channel for p in parts}) if split else [0]
        names = {c: options.channel_name(c) if split else None for c in channels}
        tracks = {c: [w for p in parts if p.channel == c for w in p.words] for c in channels}
        if split:
            tracks = {c: [dataclasses.replace(w, speaker=names[c]) for w in ws] for c, ws in tracks.items()}
        notices: list[Notice] = []
        punctuated = False
        if options.punctuation:
            punc = self.models.punctuator()
            if punc is None:
                reason = self.models.punctuation_unavailable() or "no punctuation model"
                notices.append(Notice("punctuation_unavailable", f"Punctuation is unavailable: {reason}."))
            else:
                punctuated = True
                spoken = [c for c in channels if tracks[c]]
                if spoken:
                    for c, ws in zip(spoken, punctuate_words(punc, [tracks[c] for c in spoken])):
                        tracks[c] = ws
        itn = self.settings.pipeline.itn if options.itn is None else options.itn
        if itn:
            normalizer = self.models.itn()
            if normalizer is None:
                notices.append(Notice("itn_unavailable", self.models.itn_unavailable() or "ITN unavailable."))
                itn = False
            else:
                # After punctuation (the model was trained on spoken text; ITN reads the marks).
                for c in channels:
                    if tracks[c]:
                        tracks[c] = normalizer.apply(tracks[c], keep=options.hotwords)
        # Corrections last: they are written against the text as results show it (docs/hotwords.md).
        replaced = {}
        for c in channels:
            tracks[c], replaced[c] = correct(tracks[c], options.corrections)

        grouped = [(s, c, i, j) for c in channels for s, i, j in group_sentences(tracks[c], self._subtitles)]
        if split:
            grouped.sort(key=lambda g: (g[0].start_ms, g[1]))  # one timeline; stable within a channel
        sentences = [g[0] for g in grouped]
        speakers: list[str] = []
        if options.speakers:
            spans = [s for p in parts for s in p.speaker_spans]
            embeddings = [p.speaker_embeddings for p in parts if p.speaker_embeddings is not None]
            if spans and embeddings:
                sentences, speakers = label_speakers(
                    sentences, spans, np.concatenate(embeddings), self._speaker_options(options)
                )
        elif split:
            speakers = list(dict.fromkeys(s.speaker for s in sentences if s.speaker))
        text = to_text(sentences).strip()
        diffed = options.hotword_diff and bool(options.hotwords)
        hits = []
        corrected = []
        if options.hotwords or any(replaced.values()):
            # Where each word landed in the text: only hotword hits, corrections and diffs need it.
            where = _TextIndex(text, tracks, grouped, sentences)
            for word, a, b in find_hotwords(text, options.hotwords):
                times = where.times(a, b)
                if times is not None:
                    hits.append(HotwordHit(word, a, b, *times))
            for c in channels:
                for r in replaced[c]:
                    at = where.offset(c, r.word)
                    if at is not None:
                        w = tracks[c][r.word]
                        corrected.append(CorrectionHit(r.wrong, r.right, at + r.offset, at + r.offset + len(r.right),
                                                       w.start_ms, w.end_ms))
        corrected.sort(key=lambda h: h.start)
        if options.hotword_diff and not options.hotwords:
            notices.append(Notice("hotword_diff_without_hotwords",
                                  "hotword_diff was asked for, but the request has no hotwords to compare."))
        tokens: tuple[Token, ...] = ()
        if options.timestamps:
            listed = [Token(w.text, w.start_ms, w.end_ms, names[c]) for c in channels for w in tracks[c]]
            if split:
                listed.sort(key=lambda t: t.start_ms)
            tokens = tuple(listed)
        segments = [Segment(p.segment.start_ms, p.segment.end_ms, names[p.channel]) for p in parts]
        if split:
            segments.sort(key=lambda g: g.start_ms)
        return Result(
            text=text,
            duration_ms=samples * 1000 // SAMPLE_RATE,
            sentences=tuple(sentences),
            tokens=tokens,
            segments=tuple(segments),
            speakers=tuple(speakers),
            applied=Applied(
                vad=use_vad, punctuation=punctuated, speakers=options.speakers,
                timestamps=options.timestamps, hotwords=tuple(options.hotwords), itn=itn,
                hotword_sets=tuple(s for s in options.hotword_sets if isinstance(s, HotwordSetUse)),
                hotword_diff=diffed, channels=options.channels,
            ),
            notices=tuple(notices),
            hotword_hits=tuple(hits),
            corrections=tuple(corrected),
            hotword_diff=tuple(where.diff(parts)) if diffed else None,
            processing_ms=round((time.perf_counter() - t0) * 1000),
        )

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._workers, lambda: fn(*args, **kwargs))


# ---- the stages' pure pieces ------------------------------------------------------------------


def subtitle_options(settings: Settings) -> SubtitleOptions:
    """The `subtitles` settings as the sentence builder takes them."""
    s = settings.subtitles
    return SubtitleOptions(max_chars=s.max_chars, max_duration_ms=round(s.max_duration_s * 1000),
                           min_duration_ms=round(s.min_duration_s * 1000), split_gap_ms=round(s.split_gap_s * 1000))


def segment_words(segment: Segment, result: TranscriptLike) -> list[TimedWord]:
    """The engine's tokens of one segment as words on the file's timeline (times past the
    segment's end, from CIF rounding, pulled back inside it)."""
    tokens = result.tokens or []
    stamps = result.timestamps or []
    if tokens and len(stamps) == len(tokens):
        return words_from_tokens(tokens, stamps, segment.start_ms, segment.end_ms)
    if result.text.strip():
        # No token times: the text spans the whole segment.
        return [TimedWord(result.text.strip(), segment.start_ms, segment.end_ms)]
    return []


def punctuate_words(
    punc: Punctuator, word_lists: Sequence[Sequence[TimedWord]], opts: PuncOptions | None = None
) -> list[list[TimedWord]]:
    """Words with the punctuation model's marks, all lists in one batched pass; each list ends
    with a sentence mark."""
    marks = punc.predict([[w.text for w in ws] for ws in word_lists], opts)
    out = []
    for ws, ms in zip(word_lists, marks):
        # Words are immutable: one without a new mark is kept as it is (most are), and a marked
        # one built directly (`dataclasses.replace` cost more than the punctuation model).
        marked = [w if m == w.punc else TimedWord(w.text, w.start_ms, w.end_ms, m, w.speaker) for w, m in zip(ws, ms)]
        if marked and marked[-1].punc not in SENTENCE_END:
            end = "." if marked[-1].text.isascii() else "。"
            marked[-1] = dataclasses.replace(marked[-1], punc=end)
        out.append(marked)
    return out


def label_speakers(
    sentences: list[Sentence], spans: list[SpeakerWindow], embeddings: np.ndarray, opts: SpeakerOptions
) -> tuple[list[Sentence], list[str]]:
    """Each sentence takes the speaker owning most of its time (as funasr's distribute_spk)."""
    labels = cluster_speakers(embeddings, opts).tolist()
    labelled = []
    for s in sentences:
        label = majority_speaker(s.start_ms, s.end_ms, spans, labels)
        labelled.append(dataclasses.replace(s, speaker=None if label is None else speaker_name(label)))
    names = list(dict.fromkeys(s.speaker for s in labelled if s.speaker))
    return labelled, names


def _split_chunks(
    blocks: Iterator[np.ndarray], new_feed: Callable[[], SegmentFeed]
) -> Iterator[tuple[int, SpeechChunk]]:
    """(channel, segment) of every channel of [frames, channels] blocks: one segmenter per
    channel, all fed each block in turn, so one decoder serves them and each holds only its own
    pending segment (a silent channel never makes the others pile up)."""
    feeds: list[SegmentFeed] = []
    for block in blocks:
        while len(feeds) < block.shape[1]:
            feeds.append(new_feed())
        for c, feed in enumerate(feeds):
            for chunk in feed.push(np.ascontiguousarray(block[:, c])):
                yield c, chunk
    for c, feed in enumerate(feeds):
        for chunk in feed.finish():
            yield c, chunk


class _TextIndex:
    """Where each final word is in `Result.text`, to place hotword hits, corrections and diff
    spans by character and by time."""

    def __init__(
        self,
        text: str,
        tracks: dict[int, list[TimedWord]],
        grouped: Sequence[tuple[Sentence, int, int, int]],
        sentences: Sequence[Sentence],
    ) -> None:
        self.tracks = tracks
        self._offsets: dict[int, list[int | None]] = {c: [None] * len(ws) for c, ws in tracks.items()}
        spans: list[tuple[int, int, int, int]] = []  # (start, end, start_ms, end_ms) by start
        for (_, c, i, j), at in zip(grouped, sentence_offsets(sentences)):
            words = tracks[c][i:j]
            for k, (w, off) in enumerate(zip(words, word_offsets(words))):
                pos = at + off
                if text.startswith(w.text, pos):  # always, unless a writer changed: then unplaced
                    self._offsets[c][i + k] = pos
                    spans.append((pos, pos + len(w.text), w.start_ms, w.end_ms))
        spans.sort()
        self._spans = spans
        self._starts = [s[0] for s in spans]
        self._ends = [s[1] for s in spans]  # words never share a character: ends are sorted too
        self._by_time = sorted(spans, key=lambda s: s[2])
        self._time_starts = [s[2] for s in self._by_time]
        self._longest_ms = max((s[3] - s[2] for s in spans), default=0)
        self._length = len(text)

    def offset(self, channel: int, index: int) -> int | None:
        """Where word `index` of `channel` starts in the text (None if it is not there)."""
        return self._offsets[channel][index]

    def times(self, start: int, end: int) -> tuple[int, int] | None:
        """(start_ms, end_ms) of the words holding characters [start, end)."""
        inside = self._spans[bisect.bisect_right(self._ends, start):bisect.bisect_left(self._starts, end)]
        if not inside:
            return None
        return min(s[2] for s in inside), max(s[3] for s in inside)

    def chars(self, start_ms: int, end_ms: int) -> tuple[int, int]:
        """The characters of the text spoken from start_ms to end_ms (an empty range at the next
        word when none was)."""
        # Words starting from start_ms - the longest word's length up to end_ms can overlap.
        lo = bisect.bisect_left(self._time_starts, start_ms - self._longest_ms)
        near = self._by_time[lo:bisect.bisect_right(self._time_starts, end_ms)]
        inside = [s for s in near
                  if (s[2] < end_ms and s[3] > start_ms) or (s[2] == s[3] == start_ms) or (start_ms == end_ms == s[2])]
        if inside:
            return min(s[0] for s in inside), max(s[1] for s in inside)
        after = self._by_time[bisect.bisect_left(self._time_starts, start_ms):]
        at = min((s[0] for s in after), default=self._length)
        return at, at

    def diff(self, parts: Sequence[_Part]) -> list[DiffSpan]:
        """Where each clip's text with the hotwords differs from its text without them (engine
        words, aligned by difflib), by time and by the characters of the final text."""
        spans = []
        for p in parts:
            if p.plain is None:
                continue
            with_words = segment_words(p.segment, p.transcript)
            plain_words = segment_words(p.segment, p.plain)
            matcher = difflib.SequenceMatcher(None, [w.text for w in with_words], [w.text for w in plain_words],
                                              autojunk=False)
            for op, i1, i2, j1, j2 in matcher.get_opcodes():
                if op == "equal":
                    continue
                changed = with_words[i1:i2] or plain_words[j1:j2]
                start_ms, end_ms = changed[0].start_ms, changed[-1].end_ms
                if i1 < i2:
                    a, b = self.chars(start_ms, end_ms)
                else:  # the hotwords removed text: an empty range where it was
                    a = b = self.chars(start_ms, start_ms)[0]
                spans.append(DiffSpan(start_ms, end_ms, join_words(with_words[i1:i2]), join_words(plain_words[j1:j2]),
                                      a, b))
        spans.sort(key=lambda d: (d.start_ms, d.start))
        return spans


def transcribe_files(
    settings: Settings,
    engine: EngineLike,
    sources: Sequence[AudioSource | AudioStream],
    options: Options | None = None,
) -> list[Result]:
    """Transcribe recordings with a pipeline of their own and return their results in order: the
    synchronous form for scripts and notebooks (the first error is raised). Segments of all the
    recordings share the engine's batches."""

    async def run() -> list[Result]:
        pipeline = Pipeline(settings, engine)
        await pipeline.start()
        try:
            return list(await asyncio.gather(*(pipeline.transcribe(s, options, background=True) for s in sources)))
        finally:
            await pipeline.stop()

    return asyncio.run(run())


def _decodable_input(source: AudioSource, max_bytes: int) -> tuple[bytes | str | None, bool, str | None]:
    """What a decoding process is sent for `source` (its path, or its bytes; None when it stays
    here), whether it is small (at most `max_bytes`: decoded whole there), and the temporary
    file this wrote, if any. A WAV stays (it is read without decoding). Larger bytes and uploads
    are copied to a temporary file whose path is sent (sending the bytes would pickle them whole;
    decoding them here would take the GIL back after every packet, see `decode_process_count`):
    the caller removes it once its stream is closed."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if is_wav(bytes(source[:12])):
            return None, False, None
        if len(source) > max_bytes:
            spilled = _spill(source)
            return spilled, False, spilled
        return bytes(source), True, None
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as fh:
                head = fh.read(12)
                size = os.fstat(fh.fileno()).st_size
        except OSError:
            return None, True, None  # the pipeline's own opening reports it
        return (None if is_wav(head) else os.fspath(source)), size <= max_bytes, None
    try:
        source.seek(0, os.SEEK_END)
        size = source.tell()
        source.seek(0)
        head = source.read(12)
        source.seek(0)
    except (OSError, AttributeError, ValueError):
        return None, True, None
    if is_wav(head):
        return None, False, None
    if size > max_bytes:
        spilled = _spill(source)
        source.seek(0)
        return spilled, False, spilled
    data = source.read()  # a small upload: the process gets its bytes
    source.seek(0)
    return data, True, None


def _spill(source: bytes | bytearray | memoryview | BinaryIO) -> str | None:
    """`source` written to a new temporary file (where uploads are spooled too); its path, or
    None when it cannot be written (a full disk: the recording is then decoded here)."""
    try:
        fd, path = tempfile.mkstemp(prefix="asr-decode-")
    except OSError as exc:
        log.warning("no temporary file for a large recording (%s): it is decoded in this process", exc)
        return None
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, (bytes, bytearray, memoryview)):
                out.write(source)
            else:
                shutil.copyfileobj(source, out, 1 << 20)
    except OSError as exc:
        _remove(path)
        log.warning("no temporary file for a large recording (%s): it is decoded in this process", exc)
        return None
    except BaseException:
        _remove(path)
        raise
    return path


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


async def _readable(conn: Any) -> None:
    """Until `conn` (a pipe's reading end) has a message or its writers are gone."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = conn.fileno()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)
        # uvloop (the server's loop) leaves a watched descriptor non-blocking; the thread that
        # reads the pipe next expects it blocking (a read would fail with EAGAIN).
        os.set_blocking(fd, True)


def _finish_job(job: Any, writer: Any) -> None:
    writer.close()
    if not job.cancelled() and job.exception() is not None:
        log.warning("a decoding process failed: %s", job.exception())


def blocks_stream(blocks: Iterator[np.ndarray] | Sequence[np.ndarray], duration_s: float | None = None) -> AudioStream:
    """An `AudioStream` over already decoded float32 16 kHz mono blocks (generated audio, tests)."""
    return AudioStream(SAMPLE_RATE, duration_s, iter(blocks), lambda: None, None)


__all__ = [
    "AudioBudget",
    "BusyError",
    "EngineLike",
    "Pipeline",
    "blocks_stream",
    "label_speakers",
    "punctuate_words",
    "segment_words",
    "transcribe_files",
]
