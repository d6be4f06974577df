"""CPU comparison with the peer runtimes (issue #17), for `python -m asr bench --peers sherpa-onnx`.

One run measures, on the same seeded clips and with the same number of threads: funasr's
`AutoModel.generate`, this engine (fp32 and int8) and sherpa-onnx (fp32 and int8) running the
same weights exported by `python -m asr export-onnx`. Each path runs in a child process of its
own, so its peak RSS (`ru_maxrss`, model loading included) is its own and no path inherits
another's thread pools or allocator state.

Per path: x real time over the workload (after a warm-up on two clips; the best of --repeat
passes; with --rounds, every path runs again in turn and its best round counts), peak RSS,
CPU seconds (all threads) of that pass, and the
latency of one 10 s clip (p50 over --latency-runs). What differs between the paths besides the
runtime: funasr and this engine also compute character timestamps (the CIF upsampling BLSTM);
the exported graph has no timestamp head, so sherpa-onnx does not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000


def default_threads() -> int:
    """The cores this process may run on (a container's or taskset's share), as the service uses."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def _own_peak_rss_mb() -> float:
    """This process's peak RSS since it started its program. Not `ru_maxrss`: Linux carries that
    across exec, so every path's child reported the parent's peak (3.86 GiB each after the parent
    had exported the ONNX model) whenever it exceeded the child's own; VmHWM belongs to the
    process's current memory map."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss_mb() -> float:
    """This process's peak RSS plus the peaks of its live children (a pool's engine processes)."""
    total = _own_peak_rss_mb()
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] != me:  # field 4: the parent's pid
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
    return total


def _runner(spec: dict[str, Any], model_dir: Path, onnx_dir: Path, threads: int):
    """A function recognising a list of clips, built the way each runtime's users build it."""
    kind = spec["kind"]
    if kind == "funasr":
        from asr.engine.model import import_funasr

        import_funasr()
        from funasr import AutoModel

        # ncpu: funasr sets torch's threads to it (default 4), whatever the caller had set.
        model = AutoModel(model=str(model_dir), device="cpu", ncpu=threads, disable_update=True,
                          disable_pbar=True, log_level="ERROR")
        bs = int(spec.get("batch_size", 1))
        return lambda clips: model.generate(input=clips, batch_size=bs)
    if kind == "engine":
        from asr.engine.process import load_engine
        from asr.settings import EngineSettings

        # One engine in this process, unless the variant asks for `cpu_processes` > 1 (a pool of
        # engine processes sharing `threads`, as the CLI and the service build it) or `process: on`.
        settings = {"batch_budget_s": 60.0, "max_batch_size": 8, "cpu_processes": 1} | spec.get("settings", {})
        if settings["cpu_processes"] == 1:
            settings.setdefault("process", "off")
        engine = load_engine(EngineSettings(model=str(model_dir), device="cpu", warmup=False,
                                            num_threads=threads, **settings))
        return engine.transcribe
    if kind == "sherpa-onnx":
        import sherpa_onnx

        name = "model.int8.onnx" if spec["dtype"] == "int8" else "model.onnx"
        rec = sherpa_onnx.OfflineRecognizer.from_paraformer(paraformer=str(onnx_dir / name),
                                                            tokens=str(onnx_dir / "tokens.txt"),
                                                            num_threads=threads)
        bs = int(spec.get("batch_size", 1))

        def run(clips: list[np.ndarray]) -> list[str]:
            # Length-sorted groups of `bs` streams: decode_streams pads a group to its longest clip.
            order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
            out = [""] * len(clips)
            for start in range(0, len(order), bs):
                group = order[start:start + bs]
                streams = []
                for i in group:
                    stream = rec.create_stream()
                    stream.accept_waveform(SAMPLE_RATE, clips[i])
                    streams.append(stream)
                rec.decode_streams(streams)
                for i, stream in zip(group, streams, strict=True):
                    out[i] = stream.result.text
            return out

        return run
    raise ValueError(f"unknown path kind {kind!r}")


def measure_one(spec: dict[str, Any], model_dir: Path, onnx_dir: Path, seconds: float, threads: int,
                latency_runs: int, repeat: int = 1) -> dict[str, Any]:
    """One path in this process (the child): load, warm up, time the workload and a 10 s clip."""
    import torch

    from asr.devtools.bench import workload

    torch.set_num_threads(threads)
    clips = workload(seconds)
    ten_s = workload(10.0, seed=7, lo_s=10.0, hi_s=10.0)[0]
    audio_s = sum(len(c) for c in clips) / SAMPLE_RATE
    t0 = time.perf_counter()
    run = _runner(spec, model_dir, onnx_dir, threads)
    load_s = time.perf_counter() - t0
    run(clips[:2])  # warm-up: thread pools, allocator, lazily built kernels
    passes = []
    for _ in range(repeat):  # best pass: the machine may be shared, and interference only slows
        cpu0, t0 = time.process_time(), time.perf_counter()
        run(clips)
        passes.append((time.perf_counter() - t0, time.process_time() - cpu0))
    wall, cpu = min(passes)
    lat = []
    run([ten_s])
    for _ in range(latency_runs):
        t0 = time.perf_counter()
        run([ten_s])
        lat.append((time.perf_counter() - t0) * 1000)
    lat.sort()
    return {
        "path": spec["label"],
        "x_real_time": round(audio_s / wall, 1),
        "wall_s": round(wall, 2),
        "wall_s_passes": [round(w, 2) for w, _ in passes],
        "cpu_s": round(cpu, 2),  # process CPU time: wall x threads when the cores were all ours
        "latency_10s_ms_p50": round(lat[len(lat) // 2], 1) if lat else None,
        "latency_10s_ms_min": round(lat[0], 1) if lat else None,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "load_s": round(load_s, 1),
        "torch_threads": torch.get_num_threads(),
    }


def peer_paths(peers: list[str], funasr_batch_sizes: list[int], variants: list[dict[str, Any]],
               sherpa_batch_size: int) -> list[dict[str, Any]]:
    paths: list[dict[str, Any]] = [
        {"kind": "funasr", "batch_size": bs, "label": f"funasr generate bs={bs} fp32"} for bs in funasr_batch_sizes
    ]
    for v in variants:
        desc = " ".join(f"{k}={val}" for k, val in v.items() if k != "dtype")
        paths.append({"kind": "engine", "settings": v, "label": f"engine {v.get('dtype', 'auto')} {desc}".strip()})
    if "sherpa-onnx" in peers:
        for dtype in ("fp32", "int8"):
            paths.append({"kind": "sherpa-onnx", "dtype": dtype, "batch_size": sherpa_batch_size,
                          "label": f"sherpa-onnx {dtype} bs={sherpa_batch_size}"})
    return paths


def _table(rows: list[dict[str, Any]]) -> str:
    best_funasr = max((r["x_real_time"] for r in rows if r["path"].startswith("funasr")), default=None)
    lines = ["| path | x real time | vs funasr (best) | 10 s clip p50 (min) | peak RSS | CPU s / wall s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['path']} | failed: {r['error'][:80]} | | | | |")
            continue
        vs = f"{r['x_real_time'] / best_funasr:.1f}" if best_funasr else "-"
        lines.append(f"| {r['path']} | {r['x_real_time']} | {vs} | {r['latency_10s_ms_p50']} "
                     f"({r['latency_10s_ms_min']}) ms | {r['peak_rss_mb'] / 1024:.2f} GiB "
                     f"| {r['cpu_s']} / {r['wall_s']} |")
    return "\n".join(lines)


def run_peers(args: argparse.Namespace) -> int:
    """The parent: export if needed, then one child per path, in order; a JSON report and a table."""
    threads = args.threads or default_threads()
    model_dir = Path(args.model_dir).resolve()
    onnx_dir = Path(args.onnx_dir or f"bench-out/onnx-{model_dir.name}").resolve()
    if not (model_dir / "model.pt").is_file():  # as the GPU comparison does: a fresh box has none
        from asr.devtools.testmodel import make_model_dir

        make_model_dir(model_dir, "full", seed=0)
    if "sherpa-onnx" in args.peers and not (onnx_dir / "model.int8.onnx").is_file():
        from asr.devtools.export_onnx import export_onnx

        export_onnx(model_dir, onnx_dir, quantize_int8=True)
    variants = [json.loads(v) for v in args.variant] if args.variant else [{"dtype": "fp32"}, {"dtype": "int8"}]
    funasr_bs = [] if args.skip_funasr else args.funasr_batch_sizes
    paths = peer_paths(args.peers, funasr_bs, variants, args.sherpa_batch_size)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # the same cap for every runtime's OpenMP pool
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": threads,
        "affinity_cores": default_threads(),
        "cpu": _cpu_name(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "passes": [],
    }
    best: dict[str, dict[str, Any]] = {}
    for round_no in range(args.rounds):
        # Rounds go through every path in turn, so a burst of other work on a shared machine
        # slows one pass of each path rather than every pass of one path; the best pass counts.
        for spec in paths:
            cmd = [sys.executable, "-m", "asr", "bench", "--peer-child", json.dumps(spec), "--model-dir",
                   str(model_dir), "--onnx-dir", str(onnx_dir), "--seconds", str(args.seconds), "--threads",
                   str(threads), "--latency-runs", str(args.latency_runs), "--repeat", str(args.repeat)]
            load_before = [round(x, 2) for x in os.getloadavg()]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()
                row = {"path": spec["label"], "error": tail[-1] if tail else f"exit {proc.returncode}"}
                print(proc.stderr[-3000:], file=sys.stderr)
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            row |= {"round": round_no, "load_average_before": load_before,
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]}
            result["passes"].append(row)
            print(json.dumps(row, ensure_ascii=False), file=sys.stderr, flush=True)
            kept = best.get(spec["label"])
            if kept is None or "error" in kept or ("error" not in row and row["x_real_time"] > kept["x_real_time"]):
                best[spec["label"]] = row
    result["rows"] = [best[spec["label"]] for spec in paths]
    result["table"] = _table(result["rows"])
    text = json.dumps(result, indent=1, ensure_ascii=False)
    print(text)
    print("\n" + result["table"])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    return 0 if all("error" not in r for r in result["rows"]) else 1


def run_child(args: argparse.Namespace) -> int:
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    row = measure_one(json.loads(args.peer_child), Path(args.model_dir), Path(args.onnx_dir), args.seconds,
                      args.threads or default_threads(), args.latency_runs, args.repeat)
    print(json.dumps(row, ensure_ascii=False))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"
