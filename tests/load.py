"""Load and soak test: many concurrent clients against a real server process on loopback.

    python -m tests.load --duration 60                 # start a server on the tiny model, 200 clients
    python -m tests.load --url http://127.0.0.1:7860 --pid 1234 --duration 60   # an existing server

Each client posts a short clip to /api/transcribe in a loop until the time is up, honouring
Retry-After on 503. Reported: requests, answers per status, errors (anything but 200 and the
documented 503), p50/p95/p99 latency of answered requests, throughput, and the server's resident
memory sampled through the run (with --pid or a server started here). The report is printed and
written to test-output/load-<duration>s.json. The default test run uses a short form of the same
code (tests/server/test_live_limits.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIR = ROOT / "test-output"


@dataclass
class LoadReport:
    duration_s: float
    concurrency: int
    sent: int = 0
    answered: int = 0
    audio_s: float = 0.0
    ok: int = 0
    busy_503: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None

    def percentile(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def rss_window(self, start: float, end: float) -> float | None:
        """Median resident memory (MB) between two fractions of the run."""
        values = [mb for t, mb in self.rss_mb if start * self.duration_s <= t <= end * self.duration_s]
        return statistics.median(values) if values else None

    def summary(self) -> dict[str, Any]:
        return {
            "duration_s": self.duration_s,
            "concurrency": self.concurrency,
            "sent": self.sent,
            "answered": self.answered,
            "ok": self.ok,
            "busy_503": self.busy_503,
            "errors": len(self.errors),
            "first_errors": self.errors[:5],
            "throughput_rps": round(self.ok / self.duration_s, 1),
            "audio_s_per_s": round(self.audio_s / self.duration_s, 1),
            "latency_p50_s": _round(self.percentile(0.50)),
            "latency_p95_s": _round(self.percentile(0.95)),
            "latency_p99_s": _round(self.percentile(0.99)),
            "latency_max_s": _round(max(self.latencies_s, default=0.0)),
            "rss_mb_after_warmup": _round(self.rss_window(0.3, 0.45)),
            "rss_mb_at_end": _round(self.rss_window(0.85, 1.0)),
            "rss_mb_peak": _round(max((mb for _, mb in self.rss_mb), default=0.0)),
            "client_cpu_s": _round(self.client_cpu_s),
            "server_cpu_s": _round(self.server_cpu_s),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class Clip:
    data: bytes
    seconds: float
    filename: str


def make_clips(n: int = 10, rate: int = 16000, seconds: float | None = None, fmt: str = "wav") -> list[Clip]:
    """Clips of gated tones over noise: 0.6-1.4 s, or all `seconds` long; 16-bit WAV, or mp3
    (48 kbps through PyAV, as users upload recordings)."""
    import io

    import numpy as np
    import soundfile as sf

    clips = []
    for i in range(n):
        rng = np.random.default_rng(i)
        length = seconds if seconds is not None else 0.6 + 0.2 * (i % 5)
        t = np.arange(int(length * rate)) / rate
        x = 0.3 * np.sin(2 * np.pi * (150 + 20 * i) * t) * (np.sin(2 * np.pi * 3 * t) > 0)
        x = (x + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
        if fmt == "mp3":
            from asr.devtools.bench_e2e import write_mp3

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "clip.mp3"
                write_mp3(path, x)
                clips.append(Clip(path.read_bytes(), len(t) / rate, "load.mp3"))
            continue
        buf = io.BytesIO()
        sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
        clips.append(Clip(buf.getvalue(), len(t) / rate, "load.wav"))
    return clips


async def run_load(
    url: str,
    *,
    duration_s: float = 12.0,
    concurrency: int = 200,
    pid: int | None = None,
    clips: list[Clip] | None = None,
    request_timeout_s: float = 120.0,
) -> LoadReport:
    """Run ``concurrency`` looping clients for ``duration_s`` seconds (127.0.0.1 only)."""
    if not url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        raise ValueError("the load test only talks to a server on this machine")
    clips = clips or make_clips()
    report = LoadReport(duration_s, concurrency)
    start = time.monotonic()
    deadline = start + duration_s

    async def client(n: int, http: httpx.AsyncClient) -> None:
        i = n
        while time.monotonic() < deadline:
            clip = clips[i % len(clips)]
            i += concurrency
            report.sent += 1
            t0 = time.monotonic()
            try:
                resp = await http.post("/api/transcribe", files={"file": (clip.filename, clip.data)})
            except httpx.HTTPError as exc:
                report.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            report.answered += 1
            if resp.status_code == 200:
                report.ok += 1
                report.audio_s += clip.seconds
                report.latencies_s.append(time.monotonic() - t0)
            elif resp.status_code == 503 and "Retry-After" in resp.headers:
                report.busy_503 += 1
                wait = float(resp.headers["Retry-After"])
                await asyncio.sleep(max(0.0, min(wait, deadline - time.monotonic())))
            else:
                report.errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")

    def sample_rss() -> None:
        # A thread, not a task: a busy event loop must not leave gaps in the memory readings.
        while pid is not None and time.monotonic() < deadline:
            report.rss_mb.append((time.monotonic() - start, rss_mb(pid)))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    cpu0 = time.process_time()
    server_cpu0 = cpu_s(pid) if pid is not None else None
    # No keep-alive: a connection the server closed while this client was busy would otherwise
    # be reused and fail, which would be the client's race, not a lost request.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=request_timeout_s, limits=limits) as http:
        await asyncio.gather(*(client(n, http) for n in range(concurrency)))
    sampler.join()
    report.client_cpu_s = time.process_time() - cpu0
    if pid is not None and server_cpu0 is not None:
        report.server_cpu_s = cpu_s(pid) - server_cpu0
    return report


def _client_process(url: str, duration_s: float, concurrency: int, clips: list[Clip]) -> LoadReport:
    """One client process's share of the load (spawned: no state from the parent)."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    return asyncio.run(run_load(url, duration_s=duration_s, concurrency=concurrency, clips=clips))


def run_load_processes(url: str, *, duration_s: float, concurrency: int, processes: int,
                       pid: int | None = None, clips: list[Clip] | None = None) -> LoadReport:
    """`run_load` spread over `processes` client processes, merged into one report: one Python
    process posting 30 s WAVs tops out near the rates the service is asked to reach, so the
    client would be what is measured. The server's memory and CPU are read here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    shares = [concurrency // processes + (k < concurrency % processes) for k in range(processes)]
    clips = clips or make_clips()
    report = LoadReport(duration_s, concurrency)
    start = time.monotonic()
    done = threading.Event()

    def sample_rss() -> None:
        while pid is not None and not done.is_set():
            report.rss_mb.append((time.monotonic() - start, tree_rss_mb(pid)))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    server_cpu0 = tree_cpu_s(pid) if pid is not None else None
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_client_process, [url] * processes, [duration_s] * processes, shares,
                              [clips] * processes))
    done.set()
    sampler.join()
    for part in parts:
        for name in ("sent", "answered", "audio_s", "ok", "busy_503", "client_cpu_s"):
            setattr(report, name, getattr(report, name) + getattr(part, name))
        report.errors += part.errors
        report.latencies_s += part.latencies_s
    if pid is not None and server_cpu0 is not None:
        report.server_cpu_s = tree_cpu_s(pid) - server_cpu0
    return report


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (a multi-worker server's worker and engine processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _tree_sum(pid: int, read: Any) -> float:
    """`read(p)` summed over `pid` and its descendants; a process that ended meanwhile counts 0."""
    total = 0.0
    for p in _tree(pid):
        try:
            total += read(p)
        except (OSError, RuntimeError, IndexError):
            continue
    return total


def tree_rss_mb(pid: int) -> float:
    return _tree_sum(pid, rss_mb)


def tree_cpu_s(pid: int) -> float:
    return _tree_sum(pid, cpu_s)


def write_report(report: LoadReport, name: str) -> Path:
    OUTPUT_DIR.mkdir(exist_ok=True)
    path = OUTPUT_DIR / name
    body = {"summary": report.summary(), "rss_mb": report.rss_mb}
    path.write_text(json.dumps(body, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (loopback only); default: start one on the tiny model")
    p.add_argument("--pid", type=int, help="the server's process id, for memory sampling")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--clip-seconds", type=float, help="every clip this long (default: 0.6-1.4 s)")
    p.add_argument("--format", choices=["wav", "mp3"], default="wav", help="what the clients upload")
    p.add_argument("--processes", type=int, default=1,
                   help="client processes sharing the clients (memory and CPU: the server's whole process tree)")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    server = None
    url, pid = args.url, args.pid
    if url is None:
        from asr.devtools.testmodel import make_model_dir

        sys.path.insert(0, str(ROOT / "tests"))  # the server fixtures import the tests' helpers by name
        from tests.server.conftest import start_server

        work = Path(tempfile.mkdtemp(prefix="asr-load-"))
        model = make_model_dir(work / "tiny", "tiny", seed=0)
        server = start_server(model, work, env={"ASR_LIMITS__MAX_QUEUE": "256"})
        url, pid = server.url, server.process.pid
    try:
        clips = make_clips(seconds=args.clip_seconds, fmt=args.format)
        if args.processes > 1:
            report = run_load_processes(url, duration_s=args.duration, concurrency=args.concurrency,
                                        processes=args.processes, pid=pid, clips=clips)
        else:
            report = asyncio.run(
                run_load(url, duration_s=args.duration, concurrency=args.concurrency, pid=pid, clips=clips)
            )
    finally:
        if server is not None:
            server.stop()
    path = write_report(report, f"load-{args.duration:g}s.json")
    print(json.dumps(report.summary(), indent=1))
    print(f"report written to {path}")
    return 0 if not report.errors and report.answered == report.sent else 1


if __name__ == "__main__":
    sys.exit(main())
