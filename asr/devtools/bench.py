"""Side-by-side benchmark: funasr's own path and this engine, in one process, on one GPU.

    python -m asr bench --model-dir models/full --out bench-out/result.json

Generates the full-size random-weight model directory if it is missing and a fixed, seeded
workload of 3-30 s clips. Speed numbers are audio seconds per wall second (x real time) with the
audio already decoded in memory; agreement is measured against the fp32 reference path.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import logging
import platform
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.pipeline.audio import SAMPLE_RATE

log = logging.getLogger(__name__)


def workload(total_s: float = 1924.0, seed: int = 0, lo_s: float = 3.0, hi_s: float = 30.0) -> list[np.ndarray]:
    """Seeded clips of lo_s..hi_s seconds adding up to at least total_s: voiced harmonics with
    drifting pitch, syllable-rate amplitude modulation, pauses and noise."""
    rng = np.random.default_rng(seed)
    clips: list[np.ndarray] = []
    done = 0.0
    while done < total_s:
        seconds = float(rng.uniform(lo_s, hi_s))
        n = int(seconds * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        f0 = rng.uniform(100, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
        envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t), 0, None) ** 0.5
        x = 0.1 * voiced * envelope + rng.normal(0, 0.01, n)
        clips.append(x.astype(np.float32))
        done += seconds
    return clips


@dataclass
class Measure:
    name: str
    audio_s: float
    wall_s: float
    peak_gib: float

    @property
    def xrt(self) -> float:
        return self.audio_s / self.wall_s

    def row(self) -> dict[str, Any]:
        return {
            "path": self.name,
            "x_real_time": round(self.xrt, 1),
            "gpu_s_per_audio_hour": round(3600 / self.xrt, 3),
            "wall_s": round(self.wall_s, 3),
            "peak_gpu_gib": round(self.peak_gib, 2),
        }


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(name: str, fn, audio_s: float, repeat: int = 1, warm=None) -> Measure:
    (warm or fn)()  # warm-up: kernels, allocator pools, cuDNN/cuBLAS heuristics
    _sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync()
    wall = (time.perf_counter() - start) / repeat
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    m = Measure(name, audio_s, wall, peak)
    log.warning("%-40s %9.1fx real time  %.3f s  peak %.2f GiB", name, m.xrt, wall, peak)
    return m


def bench_funasr(model_dir: Path, clips: list[np.ndarray], batch_sizes: list[int]) -> list[Measure]:
    from funasr import AutoModel

    model = AutoModel(model=str(model_dir), device="cuda" if torch.cuda.is_available() else "cpu",
                      disable_update=True, disable_pbar=True, log_level="ERROR")
    logging.getLogger().setLevel(logging.WARNING)
    audio_s = sum(len(c) for c in clips) / SAMPLE_RATE
    out = []
    for bs in batch_sizes:

        def whole(bs: int = bs) -> None:
            model.generate(input=clips, batch_size=bs)

        def warm(bs: int = bs) -> None:
            model.generate(input=clips[: 2 * bs], batch_size=bs)

        out.append(_timed(f"funasr generate bs={bs} fp32", whole, audio_s, warm=warm))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def _agreement(ref: list[dict[str, torch.Tensor]], got: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    cos, counts_equal, confident, confident_equal = [], 0, 0, 0
    for r, g in zip(ref, got):
        a, b = r["enc"].flatten().double(), g["enc"].flatten().double()
        cos.append(float(torch.dot(a, b) / (a.norm() * b.norm() + 1e-12)))
        if int(r["token_len"]) == int(g["token_len"]):
            counts_equal += 1
            top2 = r["logits"].float().topk(2, dim=-1).values
            sure = (top2[:, 0] - top2[:, 1]) > 1.0
            confident += int(sure.sum())
            confident_equal += int((r["logits"].argmax(-1) == g["logits"].argmax(-1))[sure].sum())
    return {
        "encoder_cosine_min": round(min(cos), 6),
        "encoder_cosine_mean": round(statistics.fmean(cos), 6),
        "token_count_equal_pct": round(100 * counts_equal / len(ref), 2),
        "confident_tokens": confident,
        "confident_argmax_equal_pct": round(100 * confident_equal / confident, 3) if confident else None,
    }


def _profile(engine: Any, clips: list[np.ndarray], path: Path) -> None:
    """Where the time goes in one pass over the workload: top operators by device and host time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        engine.transcribe(clips)
        _sync()
        wall_ms = (time.perf_counter() - start) * 1000
    table = prof.key_averages()
    sort_dev = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_ms = sum(e.time_range.elapsed_us() for e in kernels) / 1000
    head = (f"pass wall {wall_ms:.1f} ms (under the profiler); device kernels {len(kernels)}, "
            f"summed kernel time {busy_ms:.1f} ms (streams may overlap)\n\n")
    text = head + table.table(sort_by=sort_dev, row_limit=30)
    text += "\n\n" + table.table(sort_by="cpu_time_total", row_limit=30)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    # The timeline (chrome://tracing, Perfetto): where the GPU waits and what the host does then.
    trace = path.with_suffix(".trace.json")
    prof.export_chrome_trace(str(trace))
    with open(trace, "rb") as src, gzip.open(f"{trace}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    trace.unlink()


def bench_engine(model_dir: Path, clips: list[np.ndarray], variants: list[dict[str, Any]], latency_runs: int,
                 base: dict[str, Any], profile_dir: Path | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from asr.engine.core import Engine
    from asr.engine.model import default_device, load_model
    from asr.settings import EngineSettings

    device = default_device("auto")
    audio_s = sum(len(c) for c in clips) / SAMPLE_RATE
    probe_clips = clips[:32]
    # Each variant gets its own copy of the weights: engines cast them in place (bf16).
    ref_settings = EngineSettings(model=str(model_dir), dtype="fp32", attention="eager", frontend="funasr",
                                  warmup=False)
    ref_engine = Engine(load_model(model_dir, device), ref_settings, device)
    reference = ref_engine.probe(probe_clips)
    del ref_engine
    rows = []
    ten_s = workload(10.0, seed=7, lo_s=10.0, hi_s=10.0)[0]
    for variant in variants:
        settings = EngineSettings(model=str(model_dir), warmup=False, **{**base, **variant})
        engine = Engine(load_model(model_dir, device), settings, device)
        label = (f"engine {engine.info()['dtype']} attn={engine.attention_backend} fe={engine.frontend_kind} "
                 f"lstm={engine.lstm_kernel} "
                 f"budget={settings.batch_budget_s:g}s")
        # Two warm-up passes: a batch shape gets its CUDA graph when it is asked for the second time.
        measure = _timed(label, lambda engine=engine: engine.transcribe(clips), audio_s, repeat=5,
                         warm=lambda engine=engine: (engine.transcribe(clips), engine.transcribe(clips)))
        row = measure.row() | {"settings": variant}
        lat = []
        for _ in range(2):  # warm: this shape's graphs are captured on its second use
            engine.transcribe([ten_s])
        for _ in range(latency_runs):
            start = time.perf_counter()
            engine.transcribe([ten_s])
            lat.append((time.perf_counter() - start) * 1000)
        lat.sort()
        row["latency_10s_ms_p50"] = round(lat[len(lat) // 2], 2)
        row["latency_10s_ms_p99"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2)
        row["agreement_vs_fp32"] = _agreement(reference, engine.probe(probe_clips))
        log.warning("   %s", {k: row[k] for k in ("latency_10s_ms_p50", "latency_10s_ms_p99", "agreement_vs_fp32")})
        rows.append(row)
        if profile_dir is not None and variant is variants[-1]:
            _profile(engine, clips, profile_dir / f"profile-{len(rows)}.txt")
            _profile(engine, [ten_s], profile_dir / f"profile-{len(rows)}-10s.txt")
        params = sum(p.numel() for p in engine.model.parameters())
        engine.close()
        del engine
        gc.collect()  # the engine and its graphs refer to each other: free them before the next variant
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows, {"params": params}


DEFAULT_VARIANTS = [
    {"dtype": "fp32", "attention": "eager", "frontend": "funasr"},
    {"dtype": "bf16", "attention": "sdpa"},
    {"dtype": "bf16", "attention": "auto"},
    {"dtype": "fp16", "attention": "auto"},
]


def run(args: argparse.Namespace) -> int:
    if args.peer_child or args.peers is not None:
        from asr.devtools import bench_peers

        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        if args.funasr_batch_sizes is None:
            args.funasr_batch_sizes = [1]
        return bench_peers.run_child(args) if args.peer_child else bench_peers.run_peers(args)
    if args.funasr_batch_sizes is None:
        args.funasr_batch_sizes = [1, 64]
    from asr.runtime import configure_process
    from asr.settings import load_settings

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    configure_process(load_settings(None, engine={"device": "auto"}))  # as the CLI and the server do
    model_dir = Path(args.model_dir)
    if not (model_dir / "model.pt").is_file():
        from asr.devtools.testmodel import make_model_dir

        start = time.perf_counter()
        make_model_dir(model_dir, "full", seed=0)
        log.warning("generated %s in %.1f s", model_dir, time.perf_counter() - start)
    clips = workload(args.seconds)
    audio_s = sum(len(c) for c in clips) / SAMPLE_RATE
    log.warning("workload: %d clips, %.1f s of audio", len(clips), audio_s)
    variants = [json.loads(v) for v in args.variant] if args.variant else DEFAULT_VARIANTS
    base = json.loads(args.base) if args.base else {}
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "workload": {"clips": len(clips), "audio_s": round(audio_s, 1), "seed": 0},
    }
    if not args.skip_funasr:
        result["funasr"] = [m.row() for m in bench_funasr(model_dir, clips, args.funasr_batch_sizes)]
    profile_dir = Path(args.profile_dir) if args.profile_dir else None
    result["engine"], meta = bench_engine(model_dir, clips, variants, args.latency_runs, base, profile_dir)
    result.update(meta)
    if result.get("funasr"):
        best = max(r["x_real_time"] for r in result["funasr"])
        for row in result["engine"]:
            row["speedup_vs_best_funasr"] = round(row["x_real_time"] / best, 1)
    text = json.dumps(result, indent=1, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark funasr and this engine side by side (GPU; with --peers: CPU "
                       "against sherpa-onnx)")
    p.add_argument("--model-dir", default="models/full", help="generated here (full size) if missing")
    p.add_argument("--seconds", type=float, default=1924.0, help="audio in the workload")
    p.add_argument("--funasr-batch-sizes", type=int, nargs="+",
                   help="default: 1 64 (GPU comparison), 1 (with --peers)")
    p.add_argument("--skip-funasr", action="store_true")
    p.add_argument("--variant", action="append", help='engine settings as JSON, e.g. {"dtype":"bf16"}; repeatable')
    p.add_argument("--base", help="settings JSON applied to every variant")
    p.add_argument("--latency-runs", type=int, default=50)
    p.add_argument("--out", help="write the JSON result here")
    p.add_argument("--profile-dir", help="write a torch.profiler table per engine variant here")
    # The CPU comparison with the peer runtimes (asr/devtools/bench_peers.py).
    p.add_argument("--peers", nargs="*", choices=["sherpa-onnx"],
                   help="CPU comparison, one child process per path: funasr, the engine variants (default "
                   "fp32 and int8) and these runtimes on the same weights (exported with export-onnx); "
                   "none named: funasr and the engine only (a machine without the peers' wheels)")
    p.add_argument("--threads", type=int, help="with --peers: threads for every path (default: the CPU affinity count)")
    p.add_argument("--onnx-dir", help="with --peers: the export-onnx output (written there if missing; "
                   "default bench-out/onnx-<model dir name>)")
    p.add_argument("--sherpa-batch-size", type=int, default=1,
                   help="with --peers: clips per sherpa-onnx decode_streams call (length-sorted)")
    p.add_argument("--repeat", type=int, default=2, help="with --peers: passes over the workload; the best counts")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --peers: run every path this many times in turn; each path's best round counts")
    p.add_argument("--peer-child", help=argparse.SUPPRESS)  # child process: one path's JSON spec
    p.set_defaults(func=run)
