"""The service core shared by every front door (Gradio UI, HTTP API, OpenAI route, batch jobs).

It owns the one scheduler in front of the engine, the job store and worker, and the metrics.
Routers and UI handlers only parse input, call these methods and format output.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from asr.errors import ASRError, LimitError
from asr.pipeline import formats
from asr.pipeline.audio import SAMPLE_RATE, decode_audio
from asr.pipeline.hotwords import HotwordList, parse_hotwords
from asr.pipeline.longform import LongformModels, LongRequest, LongTranscript, from_transcripts, transcribe_files_long
from asr.pipeline.punc import Punctuator
from asr.service.jobs import JobState, JobStore, JobWorker, UploadSource, error_code
from asr.service.scheduler import Scheduler, SchedulerOptions
from asr.settings import Settings
from asr.web.metrics import Metrics

log = logging.getLogger(__name__)


class JobNotFoundError(ASRError):
    """No job has this id (or it was removed)."""

    code = "job_not_found"


class RequestTimeoutError(ASRError):
    """A synchronous request took longer than ``limits.request_timeout_s`` (HTTP 504)."""

    code = "request_timeout"


class EngineOverloadedError(ASRError):
    """The device ran out of memory on this input; worth retrying later (HTTP 503)."""

    code = "out_of_memory"
    retry_after_s = 5.0


class EngineFailedError(ASRError):
    """The engine raised an unexpected error on this input (HTTP 500); it is logged."""

    code = "engine_error"


def engine_failure(exc: Exception) -> ASRError:
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


class EngineLike(Protocol):
    """What the service needs from ``asr.engine.core.Engine``."""

    def transcribe(self, audios: Sequence[np.ndarray], hotwords: Any = None) -> list[Any]: ...

    def info(self) -> dict[str, Any]: ...


class Service:
    """Everything a request needs, built once per app from one settings object."""

    def __init__(self, settings: Settings, engine: EngineLike) -> None:
        self.settings = settings
        self.engine = engine
        self.started_at = time.time()
        self.scheduler: Scheduler[Any] = Scheduler(
            engine.transcribe,
            SchedulerOptions(
                max_batch_size=settings.engine.max_batch_size,
                max_wait_ms=settings.server.batch_wait_ms,
                max_queue=settings.limits.max_queue,
            ),
            sample_rate=SAMPLE_RATE,
            on_batch=self._on_batch,
        )
        self.metrics = Metrics(queue_depth=lambda: self.scheduler.queue_depth)
        # VAD, punctuation and speaker models: loaded once, on first use, shared by all requests.
        self.longform = LongformModels(settings.longform, settings.engine.model_cache)
        # Long recordings run VAD and wait for their segments on these threads (not asyncio's
        # small default pool, which decoding needs); the engine work itself goes through the
        # scheduler, so segments of every file in flight are batched together.
        self._long_pool = ThreadPoolExecutor(
            max_workers=min(settings.engine.max_batch_size, 32), thread_name_prefix="asr-long"
        )
        data_dir = Path(settings.server.data_dir)
        self.jobs = JobStore(settings.server.jobs_db or data_dir / "jobs.sqlite3", data_dir)
        # Enough files in flight that the scheduler can fill its batches from one job.
        self.job_worker = JobWorker(
            self.jobs,
            self._process_job_file,
            concurrency=min(settings.engine.max_batch_size, 64),
            retention_s=settings.server.job_retention_h * 3600,
            max_inflight_bytes=int(settings.limits.job_inflight_mb * 1048576),
        )

    def _on_batch(self, stats: Any) -> None:
        self.metrics.observe_batch(stats)

    async def start(self, *, warmup: bool = True) -> None:
        """Start the scheduler and job worker; optionally push one clip through the whole path."""
        await self.scheduler.start()
        if warmup:
            # A second of low noise runs the scheduler thread and the engine once, so the first
            # user does not pay for lazy CUDA module loading and allocator growth.
            noise = np.random.default_rng(0).normal(0, 0.01, SAMPLE_RATE).astype(np.float32)
            t0 = time.perf_counter()
            await self.scheduler.submit(noise, ())
            log.info("warm-up transcription took %.2f s", time.perf_counter() - t0)
        await self.job_worker.start()

    async def stop(self) -> None:
        await self.job_worker.stop()
        await self.scheduler.stop()
        self._long_pool.shutdown(wait=False, cancel_futures=True)
        self.jobs.close()

    # ---- single requests -------------------------------------------------------------------

    def parse_hotwords(self, text: str | Sequence[str] | None) -> HotwordList:
        limits = self.settings.limits
        return parse_hotwords(text, max_count=limits.max_hotwords, max_chars=limits.max_hotword_chars)

    def check_upload_size(self, size: int, name: str = "upload") -> None:
        limit = self.settings.limits.max_upload_mb * 1024 * 1024
        if size > limit:
            raise LimitError(
                f"The file '{name}' is {size / 1048576:.1f} MB; the limit is "
                f"{self.settings.limits.max_upload_mb:g} MB (limits.max_upload_mb)."
            )

    async def transcribe_bytes(
        self,
        data: bytes,
        hotwords: HotwordList = (),
        *,
        timestamps: bool = True,
        background: bool = False,
        long: LongRequest | None = None,
    ) -> dict[str, Any]:
        """Decode and transcribe one file; returns the result as plain JSON-ready data.

        ``long`` chooses VAD segmentation, punctuation and speakers (default: VAD for audio
        longer than ``longform.auto_vad_s``, punctuation when a model is available, no speakers).
        ``background=True`` (batch jobs) waits for room in a full queue instead of failing.
        """
        self.check_upload_size(len(data))
        work = self._transcribe_bytes(data, hotwords, timestamps=timestamps, background=background, long=long)
        if background:
            return await work
        timeout = self.settings.limits.request_timeout_s
        try:
            # Cancelling the wait cancels the request's scheduler futures: queued items are
            # skipped and results of a batch already running are dropped.
            return await asyncio.wait_for(work, timeout)
        except asyncio.TimeoutError:
            log.warning("request timed out after %.1f s (limits.request_timeout_s)", timeout)
            raise RequestTimeoutError(
                f"The transcription did not finish within {timeout:g} s (limits.request_timeout_s): "
                "the server is busy or the file is long. Retry later, or send long files to "
                "/api/batch_async."
            ) from None

    async def _transcribe_bytes(
        self,
        data: bytes,
        hotwords: HotwordList,
        *,
        timestamps: bool,
        background: bool,
        long: LongRequest | None,
    ) -> dict[str, Any]:
        request = long or LongRequest()
        t0 = time.perf_counter()
        audio = await asyncio.to_thread(decode_audio, data, max_duration_s=self.settings.limits.max_audio_s)
        duration = len(audio) / SAMPLE_RATE
        punc = await self._punctuator(request)
        transcript: Any
        use_vad = self.longform.use_vad(duration, request)
        try:
            if use_vad:
                long_results = await self.transcribe_long([audio], [hotwords], request, background=background)
                transcript = long_results[0]
            else:
                transcript = await self.scheduler.submit(audio, hotwords, block=background)
                if punc is not None:
                    punctuated = await asyncio.to_thread(from_transcripts, [transcript], [duration], punc)
                    transcript = punctuated[0]
        except ASRError:
            raise
        except Exception as exc:  # noqa: BLE001 - engine failures become typed, logged errors
            log.error("engine failed on a %.1f s recording: %r", duration, exc)
            raise engine_failure(exc) from exc
        elapsed = time.perf_counter() - t0
        result = transcript_to_result(transcript, duration, hotwords, elapsed, timestamps)
        result["vad"] = use_vad
        if request.punc is not False and punc is None:
            result["punctuation_unavailable"] = self.longform.punctuation_unavailable()
        return result

    async def _punctuator(self, request: LongRequest) -> Punctuator | None:
        if request.punc is False:
            return None
        # The first call loads the model (seconds); later calls return it at once.
        return await asyncio.to_thread(self.longform.punctuator)

    async def transcribe_long(
        self,
        audios: Sequence[np.ndarray],
        hotwords: Sequence[Sequence[str]],
        request: LongRequest,
        *,
        background: bool = False,
    ) -> list[LongTranscript]:
        """VAD-segment recordings and transcribe every segment through the shared scheduler.

        Segments are submitted together (one group of ``longform.group_s`` seconds at a time),
        so the scheduler batches them with each other and with every other request.
        """
        loop = asyncio.get_running_loop()
        vad = await asyncio.to_thread(self.longform.vad)
        punc = await self._punctuator(request)
        embedder = await asyncio.to_thread(self.longform.embedder) if request.speakers else None
        opts = self.longform.options(request)

        def via_scheduler(clips: list[np.ndarray], words: Any) -> list[Any]:
            per_clip = words if words and not isinstance(words[0], str) else [words or ()] * len(clips)

            async def submit_all() -> list[Any]:
                return list(await asyncio.gather(*(
                    self.scheduler.submit(c, tuple(w), block=background) for c, w in zip(clips, per_clip)
                )))

            return asyncio.run_coroutine_threadsafe(submit_all(), loop).result()

        return await loop.run_in_executor(
            self._long_pool,
            lambda: transcribe_files_long(
                via_scheduler, list(audios), vad, punc, [list(h) for h in hotwords], opts, None, embedder
            ),
        )

    # ---- batch jobs ------------------------------------------------------------------------

    async def create_job(
        self,
        files: Sequence[tuple[str, UploadSource]],
        hotwords: HotwordList,
        long: LongRequest | None = None,
    ) -> str:
        """Store the uploads durably and queue them; returns the job id once they are on disk.

        Each file is bytes or a binary file object (an upload spooled by the web server); file
        objects are copied to the data directory in blocks, so a job never sits in memory whole.
        """
        limits = self.settings.limits
        if not files:
            raise LimitError("A batch job needs at least one file.", code="no_files")
        if len(files) > limits.max_files_per_job:
            raise LimitError(
                f"{len(files)} files sent; a job takes at most {limits.max_files_per_job} "
                "(limits.max_files_per_job)."
            )
        options = long_request_to_dict(long) if long is not None else None
        job_id = await asyncio.to_thread(
            self.jobs.create_job,
            files,
            hotwords,
            options,
            check_file=self.check_upload_size,
            max_total_bytes=int(limits.max_job_mb * 1048576),
        )
        self.job_worker.notify()
        return job_id

    async def _process_job_file(
        self, data: bytes, hotwords: Sequence[str], options: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.transcribe_bytes(
            data, tuple(hotwords), background=True, long=long_request_from_dict(options)
        )

    def get_job(self, job_id: str) -> JobState:
        job = self.jobs.get_job(job_id)
        if job is None:
            raise JobNotFoundError(f"No job with id '{job_id[:64]}'.")
        return job

    def info(self) -> dict[str, Any]:
        """What the system tab and /healthz show."""
        return {
            "gpu": gpu_description(),
            "engine": self.engine.info(),
            "scheduler": {
                "max_batch_size": self.scheduler.options.max_batch_size,
                "max_wait_ms": self.scheduler.options.max_wait_ms,
                "max_queue": self.scheduler.options.max_queue,
                "queue_depth": self.scheduler.queue_depth,
                "busy": self.scheduler.busy,
                "batches_run": self.scheduler.batches_run,
                "items_run": self.scheduler.items_run,
            },
            "jobs": {"files_pending": self.jobs.pending_count()},
            "throughput": self.metrics.throughput(),
            "uptime_s": time.time() - self.started_at,
        }


def gpu_description() -> str | None:
    """Name and memory of the first visible CUDA device, or None on CPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"


def job_to_dict(job: JobState, *, with_results: bool = True) -> dict[str, Any]:
    """The JSON shape of GET /api/jobs/{id}."""
    return {
        "job_id": job.id,
        "status": job.status,
        "created_at": job.created_at,
        "total": job.total,
        "done": job.count("done"),
        "failed": job.count("failed"),
        "pending": job.count("pending") + job.count("running"),
        "hotwords": list(job.hotwords),
        "files": [
            {
                "index": f.index,
                "name": f.name,
                "size": f.size,
                "status": f.status,
                "error": {"code": f.error_code, "message": f.error} if f.status == "failed" else None,
                "result": f.result if with_results else None,
            }
            for f in job.files
        ],
    }


def long_request(
    vad: str = "auto", punc: str = "auto", speakers: bool = False, num_speakers: int | None = None
) -> LongRequest:
    """A LongRequest from the API's form values ('auto' | 'on' | 'off')."""
    choice = {"auto": None, "on": True, "off": False}
    return LongRequest(vad=choice[vad], punc=choice[punc], speakers=speakers,
                       n_speakers=num_speakers if speakers and num_speakers else None)


def long_request_to_dict(request: LongRequest) -> dict[str, Any]:
    return {"vad": request.vad, "punc": request.punc, "speakers": request.speakers,
            "n_speakers": request.n_speakers}


def long_request_from_dict(options: Mapping[str, Any]) -> LongRequest:
    return LongRequest(
        vad=options.get("vad"), punc=options.get("punc"), speakers=bool(options.get("speakers")),
        n_speakers=options.get("n_speakers"),
    )


def transcript_to_result(
    transcript: Any, duration_s: float, hotwords: HotwordList, elapsed_s: float, timestamps: bool
) -> dict[str, Any]:
    """Plain-data result of one file (what the API returns and the job store keeps).

    ``transcript`` is the engine's Transcript or a LongTranscript (VAD path / punctuated);
    `sentences` (ms) and `segments` (seconds) are on the file's timeline either way.
    """
    if isinstance(transcript, LongTranscript):
        words = transcript.words
        tokens = [w.text for w in words]
        stamps = [(w.start_ms, w.end_ms) for w in words]
    else:
        tokens = list(transcript.tokens)
        stamps = [tuple(t) for t in transcript.timestamps]
    result: dict[str, Any] = {
        "text": transcript.text,
        "language": "zh",
        "duration_s": round(duration_s, 3),
        "hotwords": list(hotwords),
        "processing_s": round(elapsed_s, 4),
        "rtf": round(elapsed_s / duration_s, 5) if duration_s > 0 else None,
        "punctuated": bool(getattr(transcript, "punctuated", False)),
    }
    if isinstance(transcript, LongTranscript):
        result["speech_s"] = round(transcript.speech_s, 3)
        result["speakers"] = list(transcript.speakers)
    timed = len(stamps) == len(tokens) and bool(tokens)
    if timestamps and timed:
        result["tokens"] = [
            {"text": tok, "start": s / 1000.0, "end": e / 1000.0}
            for tok, (s, e) in zip(tokens, stamps, strict=True)
        ]
    sentences = formats.sentences_of(transcript)
    if not sentences and transcript.text:
        sentences = formats.sentences_of(_Untimed(transcript.text, duration_s))
    result["sentences"] = [
        {"text": s.text, "start_ms": s.start_ms, "end_ms": s.end_ms, "speaker": s.speaker}
        for s in sentences
    ]
    result["segments"] = [
        {"id": i, "start": s.start_ms / 1000.0, "end": s.end_ms / 1000.0, "text": s.text,
         **({"speaker": s.speaker} if s.speaker else {})}
        for i, s in enumerate(sentences)
    ]
    return result


class _Untimed:
    def __init__(self, text: str, duration_s: float) -> None:
        self.text, self.duration_s, self.tokens, self.timestamps = text, duration_s, [], []


def render_result(result: dict[str, Any], fmt: str) -> str:
    """A stored result (see ``transcript_to_result``) as txt, srt, vtt or json."""
    if fmt == "json":
        return json.dumps(result, ensure_ascii=False, indent=1) + "\n"
    return formats.render_sentences(
        formats.sentences_from_dict(result), result["text"], fmt, result.get("duration_s")
    )


_UNSAFE = re.compile(r"[^\w\-.]+", re.UNICODE)


def safe_stem(name: str) -> str:
    """A file name stem safe to use inside a zip (keeps Chinese characters)."""
    stem = Path(name.replace("\\", "/")).stem
    return _UNSAFE.sub("_", stem).strip("._")[:80] or "audio"


__all__ = [
    "EngineFailedError",
    "EngineOverloadedError",
    "JobNotFoundError",
    "RequestTimeoutError",
    "Service",
    "error_code",
    "job_to_dict",
    "long_request",
    "render_result",
    "safe_stem",
    "transcript_to_result",
]
