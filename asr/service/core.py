"""The service core shared by every web door (Gradio UI, HTTP API, OpenAI route, batch jobs).

It owns the pipeline (and through it the one scheduler in front of the engine), the job store
and its worker, and the metrics. Routers and UI handlers only parse input into `Options`, call
these methods and render the `Result`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asr.errors import ASRError, JobNotFoundError, LimitError, RequestTimeoutError
from asr.pipeline.audio import AudioSource
from asr.pipeline.models import StageModels
from asr.pipeline.options import Options
from asr.pipeline.pipeline import EngineLike, Pipeline, SegmentCallback
from asr.pipeline.result import Result
from asr.service.front import HubLink, RemoteMetrics, RemoteScheduler
from asr.service.hotword_sets import HotwordSetStore
from asr.service.jobs import JobState, JobStore, JobSummary, JobWorker, UploadSource
from asr.service.live import LiveHub
from asr.service.metrics import Metrics
from asr.settings import Settings

log = logging.getLogger(__name__)


class Service:
    """Everything a request needs, built once per app from one settings object."""

    def __init__(
        self, settings: Settings, engine: EngineLike, models: StageModels | None = None, *,
        front: HubLink | None = None, replica: str | None = None,
    ) -> None:  # fmt: skip
        """``front``: this is one of several HTTP workers (`server.http_workers`), and the
        scheduler and engine are in the batching process at the other end of the link
        (asr/service/front.py); batch jobs run in worker 0 only.

        ``replica``: this is one of several whole services (Ray Serve replicas, asr/serve_ray.py)
        sharing the data directory; the id names this one's claims in the shared job store, and
        every replica runs jobs (see asr/service/jobs.py: owners and leases)."""
        self.settings = settings
        self.engine = engine
        self.front = front
        self.replica = replica
        self.started_at = time.time()
        scheduler = RemoteScheduler(front) if front is not None else None
        self.pipeline = Pipeline(settings, engine, on_batch=self._on_batch, models=models, scheduler=scheduler)
        self.scheduler = self.pipeline.scheduler
        self.live = LiveHub(settings, self.pipeline)
        self.metrics: Metrics | RemoteMetrics = (
            RemoteMetrics(front) if front is not None else Metrics(queue_depth=lambda: self.scheduler.queue_depth)
        )
        data_dir = Path(settings.server.data_dir)
        self.jobs = JobStore(settings.server.jobs_db or data_dir / "jobs.sqlite3", data_dir, owner=replica,
                             lease_s=settings.server.job_lease_s)
        shared = front is not None or replica is not None
        # Named hotword sets live in the same database (a table of their own). Several workers
        # (or replicas) share it: each re-reads the sets when another process changed the database.
        self.hotword_sets = HotwordSetStore(self.jobs.db_path, settings.limits, shared=shared)
        # Exactly one process runs batch jobs: with several workers, worker 0. Its start-up
        # re-queues files left 'running' - only its own predecessor can have left any, and that
        # one has exited (the supervisor starts a worker again only after the old one is gone).
        self.runs_jobs = front is None or front.index == 0
        self.job_worker = JobWorker(
            self.jobs,
            self._process_job_file,
            concurrency=settings.pipeline.files_in_flight,
            retention_s=settings.server.job_retention_h * 3600,
            max_inflight_bytes=int(settings.limits.job_inflight_mb * 1048576),
            # Jobs created through other workers wake this one through the batching process; the
            # poll only covers a wake-up sent while this worker was (re)starting. Replicas have
            # no such link: each finds the jobs created through the others by polling.
            poll_s=1.0 if replica is not None else 5.0 if front is not None else None,
            # A restarted worker 0 (or any replica) must not delete the files of a job another
            # process is storing.
            orphan_min_age_s=3600.0 if shared else 0.0,
        )
        if front is not None:
            front.on_jobs = self.job_worker.notify

    def _on_batch(self, stats: Any) -> None:
        self.metrics.observe_batch(stats)

    async def start(self, *, warmup: bool = True) -> None:
        """Start the pipeline (scheduler) and the job worker; optionally warm the engine up."""
        await self.pipeline.start(warmup=warmup)
        if self.settings.live.enabled:
            try:
                await self.pipeline._run(self.live.vad)  # loaded now, not in the first connection
            except ASRError as exc:
                log.warning("live recognition will refuse connections: %s", exc)
        if self.runs_jobs:
            await self.job_worker.start()

    async def refresh(self, *, metrics: bool = False) -> None:
        """In an HTTP worker: fetch the batching process's figures (queue, batches, engine,
        throughput, and with ``metrics`` the Prometheus text) before showing them."""
        if self.front is not None:
            await self.front.fetch_state(with_metrics=metrics)

    async def stop(self) -> None:
        await self.live.stop()
        await self.job_worker.stop()
        await self.pipeline.stop()
        self.hotword_sets.close()
        self.jobs.close()

    # ---- single requests -------------------------------------------------------------------

    def options(self, **form: Any) -> Options:
        """Options from form values, with this service's hotword limits (see `Options.from_form`),
        the named hotword sets resolved into words, corrections and the versions used."""
        return self.hotword_sets.resolve(self.pipeline.options(**form))

    def check_upload_size(self, size: int, name: str = "upload") -> None:
        limit = self.settings.limits.max_upload_mb * 1024 * 1024
        if size > limit:
            raise LimitError(
                f"The file '{name}' is {size / 1048576:.1f} MB; the limit is "
                f"{self.settings.limits.max_upload_mb:g} MB (limits.max_upload_mb)."
            )

    async def transcribe(
        self, source: AudioSource, options: Options, *, on_segment: SegmentCallback | None = None
    ) -> Result:
        """Transcribe one file for a waiting client, within `limits.request_timeout_s`
        (`on_segment`: see `Pipeline.transcribe`)."""
        timeout = self.settings.limits.request_timeout_s
        try:
            # Cancelling the wait cancels the request's scheduler futures: queued items are
            # skipped and results of a batch already running are dropped.
            return await asyncio.wait_for(self.pipeline.transcribe(source, options, on_segment=on_segment), timeout)
        except asyncio.TimeoutError:
            log.warning("request timed out after %.1f s (limits.request_timeout_s)", timeout)
            raise RequestTimeoutError(
                f"The transcription did not finish within {timeout:g} s (limits.request_timeout_s): "
                "the server is busy or the file is long. Retry later, or send long files to "
                "/api/batch_async."
            ) from None

    # ---- batch jobs ------------------------------------------------------------------------

    async def create_job(self, files: Sequence[tuple[str, UploadSource]], options: Options) -> str:
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
        job_id = await asyncio.to_thread(
            self.jobs.create_job,
            files,
            options.hotwords,
            options.to_dict(),
            check_file=self.check_upload_size,
            max_total_bytes=int(limits.max_job_mb * 1048576),
        )
        self.job_worker.notify()
        if self.front is not None:
            self.front.send(("jobs",))  # the worker that runs jobs may be another process
        return job_id

    async def _process_job_file(
        self, path: Path, hotwords: Sequence[str], options: Mapping[str, Any]
    ) -> dict[str, Any]:
        result = await self.pipeline.transcribe(path, Options.from_dict(options, tuple(hotwords)), background=True)
        return result.to_dict()

    def get_job(self, job_id: str) -> JobState:
        job = self.jobs.get_job(job_id)
        if job is None:
            raise JobNotFoundError(f"No job with id '{job_id[:64]}'.")
        return job

    def info(self) -> dict[str, Any]:
        """What the system tab and /api/info show."""
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
                # In an HTTP worker: the batching process's scheduler, as of its last answer.
                "stages": (self.front.state.get("stages", {}) if self.front is not None
                           else self.scheduler.stages.summary()),
            },
            "decoded_audio_mb": {
                "held": round(self.pipeline.budget.used / 1048576, 1),
                "budget": round(self.pipeline.budget.total / 1048576, 1),
            },
            "jobs": {"files_pending": self.jobs.pending_count()},
            "live": self.live.info(),
            **({"http_workers": self._workers_info()} if self.front is not None else {}),
            # Which replica answered (each has its own scheduler, queue and figures).
            **({"replica": {"id": self.replica, "job_lease_s": self.settings.server.job_lease_s}}
               if self.replica is not None else {}),
            "throughput": self.metrics.throughput(),
            "uptime_s": time.time() - self.started_at,
        }


    def _workers_info(self) -> dict[str, Any]:
        assert self.front is not None
        state = self.front.state
        return {
            "count": self.settings.server.http_workers,
            "this": self.front.index,
            "connected": state.get("workers", []),
            "segments_submitted": state.get("requests", 0),
            "mixed_batches": state.get("mixed_batches", 0),
            "by_worker": state.get("by_worker", {}),
            # longform.punc_in_engine / vad_in_engine: networks the batching process runs for every worker.
            "punctuation_served": state.get("punctuation", {}),
            "vad_served": state.get("vad", {}),
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
    """The JSON shape of GET /api/jobs/{id}; each finished file's `result` is a `Result`'s JSON."""
    return {
        "job_id": job.id,
        "status": job.status,
        "created_at": job.created_at,
        "total": job.total,
        "done": job.count("done"),
        "failed": job.count("failed"),
        "pending": job.count("pending") + job.count("running"),
        "hotwords": list(job.hotwords),
        "hotword_sets": [s for s in job.options.get("hotword_sets", []) if isinstance(s, dict)],
        "files": [
            {
                "index": f.index,
                "name": f.name,
                "size": f.size,
                "status": f.status,
                "error": {"code": f.error_code, "message": f.error} if f.status == "failed" else None,
                "result": stored_result(f.result).to_dict() if with_results and f.result is not None else None,
            }
            for f in job.files
        ],
    }


def summary_to_dict(job: JobSummary) -> dict[str, Any]:
    """One job in GET /api/jobs."""
    return {
        "job_id": job.id,
        "status": job.status,
        "created_at": job.created_at,
        "total": job.total,
        "done": job.done,
        "failed": job.failed,
        "pending": job.pending,
        "first_file": job.first_file,
        "status_url": f"/api/jobs/{job.id}",
    }


def stored_result(data: Mapping[str, Any]) -> Result:
    """A result as the job store keeps it (any version) as a `Result`."""
    return Result.from_dict(data)


_UNSAFE = re.compile(r"[^\w\-.]+", re.UNICODE)


def safe_stem(name: str) -> str:
    """A file name stem safe to use inside a zip (keeps Chinese characters)."""
    stem = Path(name.replace("\\", "/")).stem
    return _UNSAFE.sub("_", stem).strip("._")[:80] or "audio"


__all__ = ["Service", "gpu_description", "job_to_dict", "safe_stem", "stored_result", "summary_to_dict"]
