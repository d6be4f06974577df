"""Memory of the long-recording path: peak RSS and peak GPU memory per recording length.

`python -m asr bench-long --model DIR --minutes 10 120` transcribes a generated recording of each
length (a speech-like signal with pauses, produced block by block and streamed through the VAD, so
the whole recording never exists in memory) and prints one JSON line per length plus a Markdown
table for BENCHMARKS.md. Each length runs in a fresh child process so its peak RSS is its own.

The signal is harmonic "utterances" of 3-12 s with syllable-rate loudness, separated by 0.4-2 s
pauses of faint noise. Silero (trained on speech) does not accept it as speech, so the VAD is an
FSMN-VAD directory made by `asr.pipeline.vad.make_fsmn_vad_dir`, whose energy threshold turns it into a
deterministic energy VAD: the segmenting, batching and timeline code is the real one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000


def speech_like_blocks(seconds: float, seed: int = 0, block_s: float = 30.0) -> Iterator[np.ndarray]:
    """A deterministic speech-like recording of `seconds`, yielded in blocks of about `block_s`."""
    rng = np.random.default_rng(seed)
    total = int(seconds * SAMPLE_RATE)
    block = int(block_s * SAMPLE_RATE)
    pending = np.zeros(0, np.float32)
    made = 0
    while made < total:
        while len(pending) < block and made + len(pending) < total:
            n = int(rng.uniform(3, 12) * SAMPLE_RATE)
            t = np.arange(n) / SAMPLE_RATE
            f0 = rng.uniform(100, 220) + 25 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t)
            phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
            voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
            syllables = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t)
            utter = 0.3 * voiced * syllables + 0.03 * rng.standard_normal(n) * syllables
            pause = 0.002 * rng.standard_normal(int(rng.uniform(0.4, 2.0) * SAMPLE_RATE))
            pending = np.concatenate((pending, utter.astype(np.float32), pause.astype(np.float32)))
        out = pending[: min(block, total - made)]
        pending = pending[len(out) :]
        made += len(out)
        yield out.astype(np.float32)


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model: str, seconds: float, device: str = "auto", vad_dir: str | None = None,
            group_s: float = 600.0) -> dict[str, Any]:
    """Transcribe one generated recording in this process, through the pipeline every door uses;
    memory and speed figures."""
    import asyncio

    import torch

    from asr.engine import Engine
    from asr.pipeline.options import Options
    from asr.pipeline.pipeline import Pipeline, blocks_stream
    from asr.pipeline.vad import make_fsmn_vad_dir
    from asr.settings import load_settings

    if vad_dir is None:
        # -20 dB per 25 ms frame: the pauses' faint noise (-28 dB) is silence, utterances speech.
        vad_dir = str(make_fsmn_vad_dir(Path(tempfile.mkdtemp()) / "vad", seed=0, decibel_thres=-20.0))
    settings = load_settings(
        None,
        engine={"model": model, "device": device, "warmup": False},
        longform={"vad": "fsmn", "vad_model": vad_dir, "group_s": group_s, "punc_model": None},
    )
    engine = Engine.from_settings(settings.engine)
    options = Options(vad=True, punctuation=False)

    async def go() -> tuple[Any, float, float, bool]:
        pipeline = Pipeline(settings, engine)
        await pipeline.start()
        try:
            # Warm the engine on one window-sized recording, so lazy allocations are not growth.
            await pipeline.transcribe(blocks_stream(speech_like_blocks(30.0, seed=1)), options)
            cuda = torch.cuda.is_available() and engine.info().get("device", "cpu").startswith("cuda")
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            base_rss = _rss_mb()
            t0 = time.perf_counter()
            result = await pipeline.transcribe(blocks_stream(speech_like_blocks(seconds, seed=0)), options)
            return result, time.perf_counter() - t0, base_rss, cuda
        finally:
            await pipeline.stop()

    result, elapsed, base_rss, cuda = asyncio.run(go())
    audio_s = result.duration_ms / 1000
    out = {
        "audio_s": round(audio_s, 1),
        "speech_s": round(sum(s.end_ms - s.start_ms for s in result.segments) / 1000, 1),
        "segments": len(result.segments),
        "sentences": len(result.sentences),
        "elapsed_s": round(elapsed, 2),
        "x_realtime": round(audio_s / elapsed, 1),
        "rss_before_mb": round(base_rss, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "device": engine.info().get("device"),
    }
    if cuda:
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["peak_gpu_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return out


def run(args: argparse.Namespace) -> int:
    if args.one is not None:
        print(json.dumps(measure(args.model, args.one, args.device, args.vad_model, args.group_s)))
        return 0
    rows = []
    for minutes in args.minutes:
        cmd = [sys.executable, "-m", "asr", "bench-long", "--model", args.model, "--device", args.device,
               "--one", str(minutes * 60), "--group-s", str(args.group_s)]
        if args.vad_model:
            cmd += ["--vad-model", args.vad_model]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["minutes"] = minutes
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| recording | segments | time | × real time | RSS before | peak RSS | peak GPU allocated "
          "| peak GPU reserved |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['minutes']:g} min | {r['segments']} | {r['elapsed_s']} s | {r['x_realtime']} "
              f"| {r['rss_before_mb']} MB | {r['peak_rss_mb']} MB | {r.get('peak_gpu_mb', '—')} MB "
              f"| {r.get('peak_gpu_reserved_mb', '—')} MB |")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench-long", help="peak RSS / GPU memory of the long-recording path per length")
    p.add_argument("--model", required=True, help="model directory (e.g. from make-model --size full)")
    p.add_argument("--device", default="auto")
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 120])
    p.add_argument("--group-s", type=float, default=600.0, help="streaming window: seconds in flight")
    p.add_argument("--vad-model", help="FSMN-VAD dir (default: a generated energy VAD)")
    p.add_argument("--one", type=float, help=argparse.SUPPRESS)  # child process: one length, seconds
    p.set_defaults(func=run)
