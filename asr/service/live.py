"""Live recognition: FunASR runtime's WebSocket protocol (modes offline, online, 2pass) on the one
pipeline, with no streaming model (docs/live.md).

Per connection a `LiveSession` turns the client's messages into work: the JSON configuration,
16-bit PCM audio, and `{"is_speaking": false}` at the end. For the live modes, audio runs through
a Silero VAD stream of its own (`asr.pipeline.vad.LiveSegmenter`); the open segment is
recognised again every `live.partial_interval_ms` for partial text (`2pass-online` / `online`
messages: FunASR's clients append their `text`), and each segment the VAD closes is recognised
once more and assembled by the pipeline (punctuation, ITN) for the final text (`2pass-offline`),
exactly as `/api/transcribe` would give for that segment's audio. `offline` collects a whole
file (PCM or any format the HTTP API reads) and answers once, as `/api/transcribe` does.

One `LiveHub` per service holds every session. Received audio of all sessions is run through the
VAD together every `live.tick_ms`, in one hop to a pipeline worker and one batched Silero call per
32 ms frame across all connections. All recognition goes through the one scheduler with every
other request: finals wait for room like batch jobs (never dropped), partials are submitted only
while the queue is short (`live.partial_max_waiting`) and skipped otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import soxr

from asr.errors import ASRError, LimitError, LiveProtocolError, QueueFullError, RequestTimeoutError
from asr.pipeline.audio import SAMPLE_RATE, AudioStream
from asr.pipeline.hotwords import HotwordList, parse_hotwords
from asr.pipeline.options import Options
from asr.pipeline.pipeline import Pipeline
from asr.pipeline.result import Result
from asr.pipeline.vad import LiveSegmenter, SileroVad, SpeechChunk, VadOptions
from asr.service.scheduler import URGENT
from asr.service.stages import StageTimes
from asr.settings import Settings

log = logging.getLogger(__name__)

Mode = Literal["offline", "online", "2pass"]
MODES: tuple[Mode, ...] = ("offline", "online", "2pass")
# PCM sample rates accepted (FunASR's runtime takes 8 kHz and 16 kHz; others are resampled).
MIN_PCM_RATE, MAX_PCM_RATE = 8000, 48000
# Shorter open speech is not worth a partial (and the engine wants a few hundred samples).
_MIN_PARTIAL_S = 0.3
# Partial messages waiting for a slow client beyond this are dropped (the next one replaces them).
_MAX_QUEUED_PARTIALS = 4
_WAV_NAME_CHARS = 256


@dataclass(frozen=True)
class LiveConfig:
    """The first JSON message of a connection (FunASR's field names and defaults)."""

    mode: Mode = "2pass"
    wav_name: str = "wav-default-id"
    wav_format: str = "pcm"
    """'pcm' (16-bit little-endian mono at `audio_fs`) or, for offline, a file's extension."""
    audio_fs: int = SAMPLE_RATE
    chunk_size: tuple[int, int, int] | None = None
    """FunASR's streaming chunk in 60 ms frames ([5, 10, 5]); `chunk_size[1]` sets the partial
    pace here. None: `live.partial_interval_ms`."""
    itn: bool | None = None
    """None: the `pipeline.itn` setting."""
    hotwords: HotwordList = ()

    @classmethod
    def from_message(cls, msg: Mapping[str, Any], *, max_hotwords: int, max_hotword_chars: int) -> LiveConfig:
        """Validate the fields this server uses; FunASR's other fields (chunk_interval,
        encoder_chunk_look_back, svs_lang ...) are accepted and ignored."""
        mode = msg.get("mode", "2pass")
        if mode not in MODES:
            raise _bad_config(f"mode must be one of {', '.join(MODES)}, not {str(mode)[:20]!r}.")
        wav_name = msg.get("wav_name", cls.wav_name)
        if not isinstance(wav_name, str):
            raise _bad_config("wav_name must be a string.")
        wav_format = msg.get("wav_format") or "pcm"
        if not isinstance(wav_format, str) or len(wav_format) > 16:
            raise _bad_config("wav_format must be a short string such as 'pcm', 'wav' or 'mp3'.")
        wav_format = wav_format.lower()
        if mode != "offline" and wav_format != "pcm":
            raise _bad_config("Live modes (online, 2pass) take PCM audio only (wav_format 'pcm').")
        audio_fs = msg.get("audio_fs", SAMPLE_RATE)
        if isinstance(audio_fs, bool) or not isinstance(audio_fs, int) or not MIN_PCM_RATE <= audio_fs <= MAX_PCM_RATE:
            raise _bad_config(
                f"audio_fs must be a whole number of Hz from {MIN_PCM_RATE} to {MAX_PCM_RATE} "
                f"(16-bit PCM), not {str(audio_fs)[:20]!r}."
            )
        chunk = msg.get("chunk_size")
        chunk_size = None
        if chunk is not None:
            if isinstance(chunk, str):  # FunASR's Python server accepts "5,10,5" too
                chunk = [c.strip() for c in chunk.split(",")]
            try:
                chunk_size = tuple(int(c) for c in chunk)
            except (TypeError, ValueError):
                raise _bad_config("chunk_size must be three whole numbers, such as [5, 10, 5].") from None
            if len(chunk_size) != 3 or chunk_size[1] <= 0:
                raise _bad_config("chunk_size must be three whole numbers with a positive middle one.")
        itn = msg.get("itn")
        if itn is not None and not isinstance(itn, bool):
            raise _bad_config("itn must be true or false.")
        hotwords = parse_hotwords(
            _hotword_words(msg.get("hotwords")), max_count=max_hotwords, max_chars=max_hotword_chars
        )
        return cls(mode, wav_name[:_WAV_NAME_CHARS], wav_format, audio_fs, chunk_size, itn, hotwords)  # type: ignore[arg-type]


def _bad_config(message: str) -> LiveProtocolError:
    return LiveProtocolError(message, code="invalid_live_config")


def _hotword_words(value: Any) -> list[str] | str | None:
    """FunASR's hotword forms: a JSON object of word -> weight (as a string, or an object), or
    plain words. SeACo-Paraformer biases towards plain words, so the weights are read and
    dropped."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value  # plain words, space or comma separated
        value = parsed
    if isinstance(value, Mapping):
        return [str(k) for k in value]
    if isinstance(value, list):
        return [str(k) for k in value]
    if isinstance(value, str | int | float):
        return str(value)
    raise _bad_config("hotwords must be a JSON object of word -> weight, or words separated by spaces.")


def stamp_sents(result: Result) -> list[dict[str, Any]]:
    """FunASR's `stamp_sents`: pieces of text up to each punctuation mark, their characters
    joined by spaces, the mark, and their times (ms)."""
    text = result.text
    pos = 0
    pieces: list[dict[str, Any]] = []
    words: list[str] = []
    times: list[list[int]] = []
    for token in result.tokens:
        found = text.find(token.text, pos)
        if found < 0:
            continue
        pos = found + len(token.text)
        words.append(token.text)
        times.append([token.start_ms, token.end_ms])
        mark = ""
        while pos < len(text) and not text[pos].isalnum() and not text[pos].isspace():
            mark += text[pos]
            pos += 1
        if mark:
            pieces.append(_piece(words, times, mark))
            words, times = [], []
    if words:
        pieces.append(_piece(words, times, ""))
    return pieces


def _without_text(result: Result) -> dict[str, Any]:
    fields = result_fields(result)
    del fields["text"]
    return fields


def _piece(words: list[str], times: list[list[int]], mark: str) -> dict[str, Any]:
    return {"text_seg": " ".join(words), "punc": mark, "start": times[0][0], "end": times[-1][1], "ts_list": times}


def result_fields(result: Result) -> dict[str, Any]:
    """`text`, `timestamp` (FunASR's string form) and `stamp_sents` of a result, plus this
    server's `sentences` (text and times of each sentence)."""
    return {
        "text": result.text,
        "timestamp": json.dumps([[t.start_ms, t.end_ms] for t in result.tokens], separators=(",", ":")),
        "stamp_sents": stamp_sents(result),
        "sentences": [{"text": s.text, "start_ms": s.start_ms, "end_ms": s.end_ms} for s in result.sentences],
    }


class LiveFailure:
    """Put in a session's outbox: the connection ends with this error."""

    def __init__(self, error: ASRError) -> None:
        self.error = error


@dataclass
class LiveStats:
    """Counters over all live connections (shown in /api/info)."""

    connections: int = 0
    opened: int = 0
    partials_sent: int = 0
    partials_skipped: int = 0
    finals_sent: int = 0
    final_errors: int = 0
    vad_ticks: int = 0
    vad_frames: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    stages: StageTimes = field(default_factory=StageTimes)
    """tick: one VAD tick of all connections (take, VAD hop, hand-out); vad: the hop's own work
    in its thread; final_recognise: a closed segment's wait for and run through the engine;
    final_assemble: punctuation, ITN and sentences; final_order: waiting for the finals before it;
    final: the whole of it, from the VAD's close to the message posted."""


class LiveSession:
    """One connection's state. Event-loop methods (`on_text`, `on_audio`) are called by the route;
    results and failures come out of `outbox` in order."""

    def __init__(self, hub: LiveHub) -> None:
        self.hub = hub
        self.settings = hub.settings.live
        self.outbox: asyncio.Queue[dict[str, Any] | LiveFailure] = asyncio.Queue()
        self.config: LiveConfig | None = None
        self.phase: Literal["config", "audio", "ending", "ended"] = "config"
        self.options = Options()
        self.audio_s = 0.0
        self.late_bytes = 0  # audio received after the end (ignored)
        self.first_audio_at: float | None = None
        self._rest = b""  # an odd byte of PCM waiting for its partner
        self._incoming: list[np.ndarray] = []
        self._resampler: Any = None
        self.segmenter: LiveSegmenter | None = None
        self._offline = bytearray()
        self.seg = 0  # index of the open segment (finals sent or under way before it)
        self._sent_chars = 0  # characters of the open segment FunASR's clients have appended
        self._partial_text = ""
        self._partial_task: asyncio.Task[None] | None = None
        self._last_partial_at = 0.0
        self._partial_at_samples = 0
        self._chain: asyncio.Task[None] | None = None  # the last final in flight
        self._tasks: set[asyncio.Task[Any]] = set()
        self.partial_interval_s = self.settings.partial_interval_ms / 1000

    # ---- messages from the client (event loop) ------------------------------------------------

    def on_text(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            raise LiveProtocolError(
                "A text message must be JSON (the configuration, or {\"is_speaking\": false}).",
                code="invalid_live_config",
            ) from None
        if not isinstance(msg, dict):
            raise _bad_config("A text message must be a JSON object.")
        if self.config is None:
            limits = self.hub.settings.limits
            self.config = LiveConfig.from_message(
                msg, max_hotwords=limits.max_hotwords, max_hotword_chars=limits.max_hotword_chars
            )
            self._start(self.config)
        if msg.get("is_speaking") is False or msg.get("is_finished") is True:
            self._end()

    def on_audio(self, data: bytes) -> None:
        if self.config is None:
            raise LiveProtocolError(
                "Binary audio arrived before the JSON configuration message; send "
                '{"mode": "2pass", "wav_format": "pcm", "audio_fs": 16000, "is_speaking": true} first.'
            )
        if self.phase in ("ending", "ended"):
            # Audio a client had in flight when it sent {"is_speaking": false} (a browser's
            # recorder delivers its last buffers after the stop): not part of the session.
            self.late_bytes += len(data)
            return
        if self.config.mode == "offline":
            self._offline += data
            limit_mb = self.hub.settings.limits.max_upload_mb
            if len(self._offline) > limit_mb * 1048576:
                raise LimitError(f"The audio is over {limit_mb:g} MB (limits.max_upload_mb).", code="live_too_long")
            return
        data = self._rest + data
        cut = len(data) - len(data) % 2
        self._rest = data[cut:]
        samples = np.frombuffer(data[:cut], dtype="<i2")
        if not len(samples):
            return
        now = time.monotonic()
        if self.first_audio_at is None:
            self.first_audio_at = now
        self.audio_s += len(samples) / self.config.audio_fs
        if self.audio_s > self.settings.max_session_s:
            raise LimitError(
                f"The session is over {self.settings.max_session_s:g} s of audio (live.max_session_s).",
                code="live_too_long",
            )
        allowed = self.settings.burst_s + self.settings.max_speed * (now - self.first_audio_at)
        if self.audio_s > allowed:
            raise LimitError(
                f"Audio arrives faster than {self.settings.max_speed:g}x real time (live.max_speed); "
                "live recognition is for audio as it is spoken: send files to /api/transcribe or in "
                "the 'offline' mode.",
                code="live_too_fast",
            )
        self._incoming.append(samples.astype(np.float32) / 32768.0)

    def on_disconnect(self) -> None:
        for task in self._tasks:
            task.cancel()

    # ---- session life cycle -------------------------------------------------------------------

    def _start(self, config: LiveConfig) -> None:
        self.phase = "audio"
        self.options = Options(
            hotwords=config.hotwords,
            vad=True if config.mode != "offline" else None,
            # FunASR's online mode sends the streaming model's raw text.
            punctuation=config.mode != "online",
            itn=config.itn,
        )
        if config.mode == "offline":
            return
        # FunASR's chunk_size[1] is the streaming model's step in 60 ms frames ([5,10,5]: 600 ms);
        # the partial pace follows it within the 300-600 ms the service is built for.
        if config.chunk_size is not None:
            self.partial_interval_s = min(max(config.chunk_size[1] * 60, 300), 600) / 1000
        if config.audio_fs != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(config.audio_fs, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self.segmenter = self.hub.segmenter()

    def _end(self) -> None:
        if self.phase != "audio":
            return
        assert self.config is not None
        self.phase = "ending"
        if self.config.mode == "offline":
            self._spawn(self._offline_result())
        # Live modes: the hub's next tick flushes the VAD and chains the last message.

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _post(self, message: dict[str, Any]) -> None:
        self.outbox.put_nowait(message)

    def fail(self, error: ASRError) -> None:
        self.outbox.put_nowait(LiveFailure(error))

    # ---- the hub's tick (audio -> VAD -> finals and partials) ---------------------------------

    def has_work(self) -> bool:
        return self.segmenter is not None and (bool(self._incoming) or self.phase == "ending")

    def take_audio(self) -> tuple[list[np.ndarray], bool, bool]:
        """What the next VAD hop takes: blocks received (at the client's rate), whether the input
        ended, whether a partial is due (decided here, on the event loop)."""
        blocks, self._incoming = self._incoming, []
        ending = self.phase == "ending"
        assert self.segmenter is not None
        now = time.monotonic()
        due = (
            not ending
            and self._partial_task is None
            and now - self._last_partial_at >= self.partial_interval_s
            and self.segmenter.total - self._partial_at_samples >= SAMPLE_RATE // 10
        )
        return blocks, ending, due

    def resample(self, blocks: list[np.ndarray], last: bool) -> np.ndarray:
        """(Worker thread.) The blocks at 16 kHz."""
        audio = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
        if self._resampler is None:
            return audio
        return np.asarray(self._resampler.resample_chunk(audio, last=last), dtype=np.float32)

    def after_vad(self, chunks: list[SpeechChunk], open_chunk: SpeechChunk | None, ended: bool) -> None:
        """(Event loop.) Segments the VAD closed become finals; the open one a partial."""
        for i, chunk in enumerate(chunks):
            last = ended and i == len(chunks) - 1
            self._chain = self._spawn(self._final(self.seg, chunk, self._chain, last))
            self.seg += 1
            self._sent_chars = 0
            self._partial_text = ""
        if ended:
            if not chunks:
                self._chain = self._spawn(self._closing(self._chain))
            self.phase = "ended"
            return
        if open_chunk is not None and len(open_chunk.audio) >= _MIN_PARTIAL_S * SAMPLE_RATE:
            self._last_partial_at = time.monotonic()
            self._partial_at_samples = open_chunk.segment.end_sample
            self._partial_task = self._spawn(self._partial(self.seg, open_chunk))

    def _message(self, mode: str, text: str, is_final: bool, **extra: Any) -> dict[str, Any]:
        assert self.config is not None
        return {"mode": mode, "text": text, "wav_name": self.config.wav_name, "is_final": is_final, **extra}

    async def _partial(self, seg: int, chunk: SpeechChunk) -> None:
        assert self.config is not None
        stats = self.hub.stats
        try:
            transcript = await self.hub.pipeline.scheduler.submit_unless_busy(
                chunk.audio, self.options.hotwords, max_waiting=self.hub.partial_max_waiting
            )
        except QueueFullError:
            stats.partials_skipped += 1
            return
        except Exception as exc:  # noqa: BLE001 - a failed partial is skipped; the final follows
            log.warning("live partial failed: %r", exc)
            stats.partials_skipped += 1
            return
        finally:
            self._partial_task = None
        text = (transcript.text or "").strip()
        if seg != self.seg or self.phase == "ended" or text == self._partial_text:
            return  # its segment was finalised meanwhile, or nothing new was heard
        if self.outbox.qsize() >= _MAX_QUEUED_PARTIALS:
            stats.partials_skipped += 1  # the client reads slowly: the next partial replaces it
            return
        self._partial_text = text
        delta = text[self._sent_chars :]
        self._sent_chars = max(self._sent_chars, len(text))
        mode = "2pass-online" if self.config.mode == "2pass" else "online"
        self._post(self._message(mode, delta, False, seg=seg, segment_text=text,
                                 start_ms=chunk.segment.start_ms, end_ms=chunk.segment.end_ms))
        stats.partials_sent += 1

    async def _final(self, seg: int, chunk: SpeechChunk, before: asyncio.Task[None] | None, last: bool) -> None:
        """Recognise and assemble a closed segment (at once), then send it after the finals
        before it. Never skipped: the scheduler keeps it queued however busy it is."""
        assert self.config is not None
        stages = self.hub.stats.stages
        started = time.perf_counter()
        recognised = started

        def on_recognised() -> None:
            nonlocal recognised
            recognised = time.perf_counter()
            stages.add("final_recognise", recognised - started)

        try:
            # URGENT: a caption is waiting on it; partials (OPTIONAL) and files queue behind.
            result: Result | None = await self.hub.pipeline.transcribe_segment(
                chunk, self.options, priority=URGENT, on_recognised=on_recognised
            )
            stages.add("final_assemble", time.perf_counter() - recognised)
        except ASRError as exc:
            result = None
            error: ASRError = exc
        except Exception as exc:  # noqa: BLE001 - typed for the client, logged here
            from asr.errors import engine_failure

            log.error("live final failed: %r", exc)
            result, error = None, engine_failure(exc)
        if before is not None:
            waited = time.perf_counter()
            with contextlib.suppress(asyncio.CancelledError):
                await before
            stages.add("final_order", time.perf_counter() - waited)
        if result is None:
            self.hub.stats.final_errors += 1
            self.fail(error)
            return
        extra = {"seg": seg, "start_ms": chunk.segment.start_ms, "end_ms": chunk.segment.end_ms}
        if last:
            extra["is_end"] = True
        if self.config.mode == "2pass":
            self._post(self._message("2pass-offline", result.text, last, **_without_text(result), **extra))
        else:
            # FunASR's online mode: the client appends; send what it has not got yet.
            sent = self._sent_chars if seg == self.seg else 0
            self._post(self._message("online", result.text[sent:], last, segment_text=result.text, **extra))
        self.hub.stats.finals_sent += 1
        stages.add("final", time.perf_counter() - started)

    async def _closing(self, before: asyncio.Task[None] | None) -> None:
        """The last message when the input ended in silence: empty, `is_final` true."""
        if before is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await before
        assert self.config is not None
        mode = "2pass-offline" if self.config.mode == "2pass" else "online"
        self._post(self._message(mode, "", True, timestamp="[]", stamp_sents=[], is_end=True))

    async def _offline_result(self) -> None:
        assert self.config is not None
        config = self.config
        try:
            if config.wav_format == "pcm":
                if len(self._offline) < 2:
                    raise LiveProtocolError("The offline session sent no audio.", code="invalid_live_config")
                pcm = np.frombuffer(bytes(self._offline[: len(self._offline) // 2 * 2]), dtype="<i2")
                audio = pcm.astype(np.float32) / 32768.0
                source: Any = AudioStream(
                    config.audio_fs, len(audio) / config.audio_fs, iter([audio]), lambda: None,
                    self.hub.settings.limits.max_audio_s,
                )  # fmt: skip
            else:
                source = bytes(self._offline)
            self._offline = bytearray()
            timeout = self.hub.settings.limits.request_timeout_s
            try:
                result = await asyncio.wait_for(self.hub.pipeline.transcribe(source, self.options), timeout)
            except asyncio.TimeoutError:
                raise RequestTimeoutError(f"The transcription took over {timeout:g} s.") from None
        except ASRError as exc:
            self.fail(exc)
            return
        self._post(self._message("offline", result.text, True, **_without_text(result), is_end=True))
        self.phase = "ended"


class LiveHub:
    """Every live connection of the service and the tick that runs their audio through the VAD."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.sessions: set[LiveSession] = set()
        self.stats = LiveStats()
        live = settings.live
        self._vad_opts = VadOptions(
            max_segment_s=live.max_segment_s, min_segment_s=0.0, merge_gap_s=0.0, min_silence_ms=live.min_silence_ms
        )
        self._vad: SileroVad | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.partial_max_waiting = live.partial_max_waiting or 2 * settings.engine.max_batch_size

    def vad(self) -> SileroVad:
        if self._vad is None:
            # One model for every connection: `decide_streams` batches them in one call (on the
            # GPU where there is one: a tick of a thousand connections is a few kernels).
            self._vad = SileroVad(lanes=1, device=self.pipeline.models.silero_device())
        return self._vad

    def segmenter(self) -> LiveSegmenter:
        vad = self.vad()
        return LiveSegmenter(vad.open_live(self._vad_opts), self._vad_opts)

    def open(self) -> LiveSession:
        """A new connection's session; LimitError (1013) past `live.max_connections`."""
        if len(self.sessions) >= self.settings.live.max_connections:
            self.refused("too_many_connections")
            raise LimitError(
                f"The server has {len(self.sessions)} live connections (live.max_connections); "
                "try again later.",
                code="too_many_connections",
            )
        session = LiveSession(self)
        self.sessions.add(session)
        self.stats.connections = len(self.sessions)
        self.stats.opened += 1
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick_loop(), name="asr-live-vad")
        return session

    def close(self, session: LiveSession) -> None:
        session.on_disconnect()
        self.sessions.discard(session)
        self.stats.connections = len(self.sessions)

    def refused(self, code: str) -> None:
        self.stats.refused[code] = self.stats.refused.get(code, 0) + 1

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for session in list(self.sessions):
            self.close(session)

    async def _tick_loop(self) -> None:
        tick = self.settings.live.tick_ms / 1000
        while self.sessions:
            started = time.monotonic()
            work = [s for s in self.sessions if s.has_work()]
            if work:
                try:
                    await self._tick(work)
                except Exception:  # noqa: BLE001 - one bad tick must not end live recognition
                    log.exception("live VAD tick failed")
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))

    async def _tick(self, work: list[LiveSession]) -> None:
        started = time.perf_counter()
        taken = [(s, *s.take_audio()) for s in work]
        outcomes = await self.pipeline._run(self._vad_hop, taken)
        for (session, *_), (chunks, open_chunk, ended) in zip(taken, outcomes):
            if session in self.sessions:
                session.after_vad(chunks, open_chunk, ended)
        self.stats.stages.add("tick", time.perf_counter() - started)

    def _vad_hop(
        self, taken: list[tuple[LiveSession, list[np.ndarray], bool, bool]]
    ) -> list[tuple[list[SpeechChunk], SpeechChunk | None, bool]]:
        """(Worker thread.) Every session's new audio through its segmenter, all VAD frames of
        all sessions decided together."""
        started = time.perf_counter()
        for session, blocks, ending, _ in taken:
            assert session.segmenter is not None
            session.segmenter.append(session.resample(blocks, ending))
        regions = [s.segmenter.regions for s, *_ in taken if s.segmenter is not None]
        self.stats.vad_frames += self.vad().decide_streams(regions)
        self.stats.vad_ticks += 1
        out = []
        for session, _, ending, due in taken:
            seg = session.segmenter
            assert seg is not None
            chunks = seg.advance()
            if ending:
                chunks += seg.finish()
            out.append((chunks, seg.open_audio() if due else None, ending))
        self.stats.stages.add("vad", time.perf_counter() - started)
        return out

    def info(self) -> dict[str, Any]:
        s = self.stats
        return {
            "connections": s.connections, "opened": s.opened, "partials_sent": s.partials_sent,
            "partials_skipped": s.partials_skipped, "finals_sent": s.finals_sent, "final_errors": s.final_errors,
            "vad_ticks": s.vad_ticks, "vad_frames": s.vad_frames, "refused": dict(s.refused),
            "stages": s.stages.summary(),
        }  # fmt: skip


__all__ = ["LiveConfig", "LiveFailure", "LiveHub", "LiveSession", "MODES", "result_fields", "stamp_sents"]
