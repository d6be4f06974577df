"""What the batching process costs per segment with several HTTP workers (asr/service/front.py),
without a model: the hub's scheduler in front of an engine that answers at once, fed by worker
processes that each keep `--in-flight` segments of `--clip-s` seconds submitted through their
`HubLink` (shared memory + unix socket), as the HTTP workers' pipelines do.

    python -m asr.devtools.bench_front --workers 2 --seconds 10 --clip-s 30

Prints segments per second through the hub and the hub process's CPU milliseconds per segment
(its event loop plus the scheduler; the engine's own work is left out on purpose): the ceiling
the batching process puts on the service, whatever the GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class _InstantEngine:
    """Answers at once with a transcript of speech's size (about 5 characters a second)."""

    def transcribe(self, audios: Sequence[np.ndarray], hotwords: Any = None) -> list[Any]:
        from asr.engine.results import Transcript

        out = []
        for audio in audios:
            n = max(1, int(len(audio) / 16000 * 5))
            stamps = [(200 * i, 200 * i + 150) for i in range(n)]
            out.append(Transcript(text="你" * n, tokens=["你"] * n, token_ids=[7] * n, timestamps=stamps,
                                  duration_s=len(audio) / 16000))  # fmt: skip
        return out

    def info(self) -> dict[str, Any]:
        return {"engine": "instant"}


def _client(socket_path: str, arena: str, index: int, seconds: float, clip_s: float, in_flight: int, out: Any) -> None:
    from asr.service.front import FrontConfig, HubLink

    async def main() -> int:
        link = HubLink(FrontConfig(index, socket_path, arena))
        await link.connect()
        clip = np.random.default_rng(index).normal(0, 0.1, int(16000 * clip_s)).astype(np.float32)
        done = 0
        stop = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < stop:
                await link.submit(clip, ("北京",), block=False, priority=1)
                done += 1

        await asyncio.gather(*(loop() for _ in range(in_flight)))
        await link.close()
        return done

    out.put(asyncio.run(main()))


def run(workers: int, seconds: float, clip_s: float, in_flight: int, max_batch: int) -> dict[str, Any]:
    import asr.engine.results  # noqa: F401 - imported (with torch) before the clock starts
    from asr.service.front import BatchHub
    from asr.service.scheduler import SchedulerOptions

    folder = Path(tempfile.mkdtemp(prefix="asr-bench-front-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    socket_path = str(folder / "hub.sock")
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()

    async def main() -> dict[str, Any]:
        hub = BatchHub(SchedulerOptions(max_batch_size=max_batch, max_wait_ms=5, max_queue=4096), _InstantEngine())
        await hub.start(socket_path)
        procs = [ctx.Process(target=_client, args=(socket_path, str(folder), i, seconds, clip_s, in_flight, results))
                 for i in range(workers)]  # fmt: skip
        for p in procs:
            p.start()
        while len(hub.workers) < workers:
            await asyncio.sleep(0.05)
        cpu0, t0 = time.process_time(), time.perf_counter()
        while any(p.is_alive() for p in procs):
            await asyncio.sleep(0.05)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        segments = sum(results.get() for _ in procs)
        await hub.stop()
        return {
            "workers": workers, "clip_s": clip_s, "in_flight_per_worker": in_flight, "segments": segments,
            "segments_per_s": round(segments / wall, 1), "audio_s_per_s": round(segments * clip_s / wall, 1),
            "hub_cpu_ms_per_segment": round(1000 * cpu / max(segments, 1), 3),
            "hub_cpu_share": round(cpu / wall, 2), "batches": hub.scheduler.batches_run,
            "mixed_batches": hub.mixed_batches,
        }  # fmt: skip

    try:
        return asyncio.run(main())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clip-s", type=float, default=30.0)
    p.add_argument("--in-flight", type=int, default=32, help="segments each worker keeps submitted")
    p.add_argument("--max-batch", type=int, default=64)
    args = p.parse_args(argv)
    print(json.dumps(run(args.workers, args.seconds, args.clip_s, args.in_flight, args.max_batch)))


if __name__ == "__main__":
    main()
