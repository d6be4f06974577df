"""Live load: N concurrent WebSocket streams replayed at real time against /api/live.

    python -m tests.live_load --url ws://127.0.0.1:7860/api/live --wav speech.wav --streams 300
    python -m tests.live_load --url ... --wav speech.wav --streams 1000 --processes 16 --gpu

Each stream speaks FunASR runtime's protocol in 2pass mode: the configuration, then the file's
16 kHz 16-bit PCM in 60 ms messages on a real-time schedule, then {"is_speaking": false}. Streams
are spread over `--processes` client processes (asyncio in each) and start staggered over one
second. Measured per stream, from the server's messages (docs/live.md):

- partial latency: a 2pass-online message arrives this long after the audio up to its `end_ms`
  was sent (the newest audio it covers);
- final latency after the end of speech: a 2pass-offline message arrives this long after the
  audio at its segment's end of speech (`end_ms` less the VAD's 200 ms padding) was sent; it
  includes the pause that tells the VAD speech ended (`live.min_silence_ms`, 300 ms);
- finals: every stream must get one per segment, numbered without a gap, and the closing
  `is_final` message; a stream that gets fewer than the most any stream got, or is closed, counts
  its missing finals as dropped.

With `--gpu`, `nvidia-smi` is sampled every 0.5 s for the GPU's utilisation. Each report also
holds the server's own stage figures after the pass (`server_stages`, from /api/info). A report per
pass (`--passes`) is printed as JSON as it ends, and the list is written to
test-output/live-load-<streams>.json. The test suite runs a small N on the CPU with the tiny model
(tests/server/test_live_load.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import statistics
import subprocess
import threading
import time
import wave
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIR = ROOT / "test-output"
SR = 16000
MESSAGE_SAMPLES = 960  # 60 ms
PAD_MS = 200  # the live VAD's padding after the end of speech (VadOptions.speech_pad_ms)


def read_pcm(path: str | Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        if w.getframerate() != SR or w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise SystemExit(f"{path}: a 16 kHz 16-bit mono WAV is needed")
        return w.readframes(w.getnframes())


async def one_stream(url: str, pcm: bytes, index: int, delay_s: float, headers: dict[str, str]) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay_s)
    out: dict[str, Any] = {"partial_ms": [], "final_ms": [], "finals": [], "ended": False, "error": None}
    step = MESSAGE_SAMPLES * 2
    sent_at: list[float] = []  # wall time each message was sent

    def sent_time(ms: int) -> float | None:
        i = max(0, (ms * SR // 1000 - 1) // MESSAGE_SAMPLES)  # the message holding the sample before `ms`
        return sent_at[i] if i < len(sent_at) else None

    try:
        async with connect(url, additional_headers=headers, subprotocols=["binary"], ping_interval=None,
                           max_queue=None, open_timeout=60) as ws:  # fmt: skip
            await ws.send(json.dumps({"mode": "2pass", "wav_name": f"s{index}", "wav_format": "pcm", "audio_fs": SR,
                                      "is_speaking": True, "chunk_size": [5, 10, 5], "itn": True}))  # fmt: skip

            async def send() -> None:
                start = time.monotonic()
                for n, i in enumerate(range(0, len(pcm), step)):
                    await asyncio.sleep(max(0.0, start + n * 0.06 - time.monotonic()))
                    sent_at.append(time.monotonic())
                    await ws.send(pcm[i : i + step])
                await ws.send(json.dumps({"is_speaking": False}))

            sender = asyncio.create_task(send())
            async for raw in ws:
                now = time.monotonic()
                msg = json.loads(raw)
                if msg.get("mode") == "2pass-online" and "end_ms" in msg:
                    t = sent_time(msg["end_ms"])
                    if t is not None:
                        out["partial_ms"].append((now - t) * 1000)
                elif msg.get("mode") == "2pass-offline" and "seg" in msg:
                    out["finals"].append(msg["seg"])
                    t = sent_time(msg["end_ms"] - PAD_MS)
                    if t is not None and not msg.get("is_end"):
                        out["final_ms"].append((now - t) * 1000)
                if msg.get("is_final"):
                    out["ended"] = True
                    break
            await sender
    except Exception as exc:  # noqa: BLE001 - a failed stream is reported, the others go on
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def _process(url: str, pcm: bytes, indexes: list[int], stagger_s: float, headers: dict[str, str],
             queue: Any) -> None:  # fmt: skip
    async def run() -> list[dict[str, Any]]:
        n = max(1, len(indexes))
        return list(await asyncio.gather(*(
            one_stream(url, pcm, i, stagger_s * k / n, headers) for k, i in enumerate(indexes))))  # fmt: skip

    queue.put(asyncio.run(run()))


def _gpu_sampler(samples: list[float], stop: threading.Event) -> None:
    try:
        proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                 "-lms", "500"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    except OSError:
        return
    assert proc.stdout is not None
    for line in proc.stdout:
        if stop.is_set():
            break
        with contextlib.suppress(ValueError):
            samples.append(float(line.split(",")[0]))
    proc.terminate()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def run(url: str, pcm: bytes, streams: int, processes: int, *, token: str | None = None,
        gpu: bool = False) -> dict[str, Any]:  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    processes = max(1, min(processes, streams))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    groups = [list(range(streams))[p::processes] for p in range(processes)]
    gpu_samples: list[float] = []
    stop = threading.Event()
    if gpu:
        threading.Thread(target=_gpu_sampler, args=(gpu_samples, stop), daemon=True).start()
    t0 = time.monotonic()
    procs = [ctx.Process(target=_process, args=(url, pcm, g, 1.0, headers, queue)) for g in groups]
    for p in procs:
        p.start()
    results: list[dict[str, Any]] = []
    for _ in procs:
        results += queue.get()
    for p in procs:
        p.join()
    stop.set()
    wall = time.monotonic() - t0
    most = max((len(r["finals"]) for r in results), default=0)
    dropped = 0
    gaps = 0
    for r in results:
        dropped += most - len(r["finals"])
        if sorted(r["finals"]) != list(range(len(r["finals"]))):
            gaps += 1
    partial = [x for r in results for x in r["partial_ms"]]
    final = [x for r in results for x in r["final_ms"]]
    return {
        "streams": streams, "processes": processes, "audio_s_per_stream": round(len(pcm) / 2 / SR, 2),
        "wall_s": round(wall, 1), "ended": sum(r["ended"] for r in results),
        "errors": [r["error"] for r in results if r["error"]][:10],
        "error_count": sum(1 for r in results if r["error"]),
        "partials": len(partial), "partial_p50_ms": pct(partial, 0.5), "partial_p95_ms": pct(partial, 0.95),
        "finals": sum(len(r["finals"]) for r in results), "finals_per_stream": most,
        "final_p50_ms": pct(final, 0.5), "final_p95_ms": pct(final, 0.95),
        "dropped_finals": dropped, "streams_with_gaps": gaps,
        "gpu_util_mean": round(statistics.mean(gpu_samples), 1) if gpu_samples else None,
        "gpu_util_max": max(gpu_samples) if gpu_samples else None,
        "server_stages": server_stages(url, headers),
    }  # fmt: skip


def server_stages(url: str, headers: dict[str, str]) -> dict[str, Any] | None:
    """The server's own figures after the run (/api/info): where its finals' time went, by stage,
    in the HTTP worker that answers (`live`), and in the scheduler (`scheduler`). None if the
    server does not give them."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    request = urllib.request.Request(f"{scheme}://{parts.netloc}/api/info", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            info = json.loads(answer.read())
    except (OSError, ValueError):
        return None
    return {"live": info.get("live", {}).get("stages"), "scheduler": info.get("scheduler", {}).get("stages")}


def make_wav(path: str | Path) -> Path:
    """Eight sentences of synthesised Mandarin with 0.8-1.5 s pauses (about 40 s), as a 16 kHz
    16-bit WAV: speech the VAD cuts into segments (needs espeak-ng: run it where that is
    installed and carry the file)."""
    import sys

    import numpy as np

    sys.path.insert(0, str(ROOT / "tests"))
    from speech import SENTENCES, recording

    rec = recording(SENTENCES[:8], [1.0, 1.5, 0.8, 1.2], lead_s=0.5)
    pcm = np.round(np.clip(rec.audio, -1, 1) * 32767).astype("<i2")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--make-wav", metavar="PATH", help="write the test speech WAV (espeak-ng) and exit")
    p.add_argument("--url", help="ws://host:port/api/live")
    p.add_argument("--wav", help="16 kHz 16-bit mono WAV replayed by every stream")
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--processes", type=int, default=max(1, (multiprocessing.cpu_count() or 2) // 2))
    p.add_argument("--token", help="the server's api_token, if it has one")
    p.add_argument("--gpu", action="store_true", help="sample nvidia-smi's utilisation during the run")
    p.add_argument("--passes", type=int, default=1,
                   help="replay this many times, one report each: the first pass on a fresh server includes "
                        "its warm-up (CUDA graphs for the live batch shapes), later ones are the steady state")
    args = p.parse_args(argv)
    if args.make_wav:
        print(make_wav(args.make_wav))
        return 0
    if not args.url or not args.wav:
        p.error("--url and --wav are needed")
    pcm = read_pcm(args.wav)
    reports = []
    for n in range(args.passes):
        reports.append({"pass": n + 1, **run(args.url, pcm, args.streams, args.processes, token=args.token,
                                             gpu=args.gpu)})  # fmt: skip
        print(json.dumps(reports[-1], indent=1), flush=True)
    OUTPUT_DIR.mkdir(exist_ok=True)
    (OUTPUT_DIR / f"live-load-{args.streams}.json").write_text(json.dumps(reports, indent=1) + "\n")
    return 0 if all(r["dropped_finals"] == 0 and r["error_count"] == 0 for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
