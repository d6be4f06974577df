"""What users run, end to end, beside the engine's in-process figure of the same run.

    python -m asr bench-e2e --model models/full --speech speech.wav --config h100 --out e2e.json

Rows (each after the models are loaded, except the cold start):
- engine: the folder's clips, already decoded, in one `Engine.transcribe` call (the ceiling);
- folder: N mp3 clips through the command line's own loop (decode, VAD when long, punctuation,
  ITN, SRT files written);
- long: one 60-min mp3 -> SRT with VAD and punctuation; then ten of them in one call;
- the folder and one long recording again with the pipeline's parallel parts off
  (`vad_workers=1`, `decode_processes=0`), so the run shows what they bring;
- cold start: `python -m asr transcribe` of one 10 s mp3 in a fresh process, first result;
- funasr (`--funasr`): funasr's own pipeline (FSMN-VAD + model + CT-Transformer) on the long
  recording, already decoded;
- the service (`--service-workers 1 4`): the server started per worker count (`--no-ui
  --http-workers W`), its time from start to a ready `/healthz`, then clients posting 30 s clips
  (WAV at 150 and 300 clients, mp3 at 150; `tests/load.py` spread over `--load-processes`
  processes so the client is not the limit): audio-s/s, latency, errors, the server's memory.

The audio is made by the bench, seeded: `--speech` (a WAV of real speech, e.g. from
`python -m tests.live_load --make-wav`) cut and tiled with random gains and pauses, encoded as mp3
through PyAV. Silero only finds speech in speech, so without `--speech` the long rows have no
segments worth the name: the bench refuses to run without it. With random weights the text is
meaningless and only the speed counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000


def _speech(path: str) -> np.ndarray:
    from asr.pipeline.audio import decode_audio

    audio = decode_audio(path)
    if len(audio) < 5 * SAMPLE_RATE:
        raise SystemExit(f"{path}: at least 5 s of speech is needed")
    return audio


def _tiled(speech: np.ndarray, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """`seconds` of the speech, in pieces of 4-20 s at random offsets and gains, with 0.3-2 s
    pauses of faint noise between them."""
    out: list[np.ndarray] = []
    n = 0
    total = int(seconds * SAMPLE_RATE)
    while n < total:
        length = min(int(rng.uniform(4, 20) * SAMPLE_RATE), len(speech))
        start = int(rng.integers(0, len(speech) - length + 1))
        piece = speech[start : start + length] * rng.uniform(0.5, 1.0)
        pause = rng.normal(0, 0.002, int(rng.uniform(0.3, 2.0) * SAMPLE_RATE))
        out += [piece.astype(np.float32), pause.astype(np.float32)]
        n += length + len(pause)
    return np.concatenate(out)[:total]


def write_mp3(path: Path, audio: np.ndarray, bitrate: int = 48000) -> None:
    """16 kHz mono mp3 through PyAV (FFmpeg's LAME)."""
    import av

    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype("<i2")
    with av.open(str(path), "w", format="mp3") as out:
        stream = out.add_stream("mp3", rate=SAMPLE_RATE)
        stream.bit_rate = bitrate
        stream.layout = "mono"
        for start in range(0, len(pcm), 1152 * 64):
            frame = av.AudioFrame.from_ndarray(pcm[None, start : start + 1152 * 64], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


_SPEECH: np.ndarray | None = None


def _set_speech(speech: np.ndarray) -> None:
    global _SPEECH
    _SPEECH = speech


def _make_mp3(path: Path, seed: list[int], low_s: float, high_s: float) -> int:
    """One seeded recording of `low_s`..`high_s` seconds cut from the speech, written as mp3;
    returns its samples (run in a process pool: LAME encodes at ~250x real time per core)."""
    assert _SPEECH is not None
    rng = np.random.default_rng(seed)
    audio = _tiled(_SPEECH, float(rng.uniform(low_s, high_s)), rng)
    write_mp3(path, audio)
    return len(audio)


def make_inputs(work: Path, speech: np.ndarray, clips: int, long_minutes: float, long_files: int,
                seed: int = 0) -> dict[str, Any]:
    """The folder of clips (3-28 s), the long recording (and copies), one 10 s clip; the same
    files for the same seed, encoded on every core."""
    from concurrent.futures import ProcessPoolExecutor

    folder = work / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    long_dir = work / "long"
    long_dir.mkdir(exist_ok=True)
    jobs = [(long_dir / "long00.mp3", [seed, 1_000_001], long_minutes * 60, long_minutes * 60),
            (work / "ten_seconds.mp3", [seed, 1_000_002], 10.0, 10.0)]
    jobs += [(folder / f"clip{i:04d}.mp3", [seed, i], 3.0, 28.0) for i in range(clips)]
    with ProcessPoolExecutor(initializer=_set_speech, initargs=(speech,)) as pool:
        list(pool.map(_make_mp3, *zip(*jobs)))
    for i in range(1, long_files):
        shutil.copyfile(long_dir / "long00.mp3", long_dir / f"long{i:02d}.mp3")
    _set_speech(speech)
    rng = np.random.default_rng([seed, 1_000_001])
    long_audio = _tiled(speech, float(rng.uniform(long_minutes * 60, long_minutes * 60)), rng)
    decoded = []
    for i in range(clips):  # the engine row's clips: the same audio, before encoding
        rng = np.random.default_rng([seed, i])
        decoded.append(_tiled(speech, float(rng.uniform(3.0, 28.0)), rng))
    return {"folder": folder, "clips": decoded, "long_dir": long_dir, "long": long_dir / "long00.mp3",
            "long_audio": long_audio, "short": work / "ten_seconds.mp3"}


def make_full_punc(path: Path, model_dir: Path) -> Path:
    """A CT-Transformer of the released model's shape (272,727 words, 4 SANM blocks of 256),
    seeded random weights; its vocabulary holds the recogniser's tokens so every word is known."""
    from asr.pipeline.punc import make_punc_model_dir

    tokens = json.loads((model_dir / "tokens.json").read_text(encoding="utf-8"))
    filler = [f"w{i}" for i in range(272_727 - len(tokens) - 4)]
    return make_punc_model_dir(path, [*tokens, *filler], seed=0, dim=256, full=True)


def _pipeline_rows(
    settings: Any, engine: Any, inputs: dict[str, Any], label: str, out_dir: Path, many: bool = True
) -> list[dict[str, Any]]:
    from asr.pipeline.pipeline import start_decoders

    rows: list[dict[str, Any]] = []
    # As the command line does: the decoding processes start with the command (while its models
    # load), not inside each row.
    decoders = start_decoders(settings)
    try:
        return _rows_with(settings, engine, inputs, label, out_dir, many, decoders, rows)
    finally:
        if decoders is not None:
            decoders.shutdown(wait=False, cancel_futures=True)


def _rows_with(
    settings: Any, engine: Any, inputs: dict[str, Any], label: str, out_dir: Path, many: bool, decoders: Any,
    rows: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    from asr.cli import _transcribe_files, find_audio_files
    from asr.file_workers import file_worker_count
    from asr.pipeline.options import Options
    from asr.pipeline.pipeline import Pipeline

    def row(name: str, audio_s: float, seconds: float, **extra: Any) -> None:
        rows.append({"row": name, "setting": label, "audio_s": round(audio_s, 1), "wall_s": round(seconds, 3),
                     "x_real_time": round(audio_s / seconds, 1), **extra})
        print(json.dumps(rows[-1]), flush=True)

    args = argparse.Namespace(output_dir=str(out_dir), format=["srt", "json"], quiet=True,
                              inputs=[str(inputs["folder"])])
    clips_s = sum(len(c) for c in inputs["clips"]) / SAMPLE_RATE
    files = find_audio_files([str(inputs["folder"])])
    long_s = len(inputs["long_audio"]) / SAMPLE_RATE
    long_files = sorted(inputs["long_dir"].glob("*.mp3"))
    n_workers = file_worker_count(settings, files)
    if n_workers > 1:  # as the command line runs a folder: the pipeline in file workers
        _worker_rows(settings, engine, files, long_files if many else [], n_workers, out_dir, row, clips_s, long_s)
    else:
        # Warm-up: graphs for the batch shapes, punctuation and ITN loaded, decoding processes started.
        asyncio.run(_transcribe_files(settings, engine, files[:64], Options(), args, decoders=decoders))
        t = time.perf_counter()
        asyncio.run(_transcribe_files(settings, engine, files, Options(), args, decoders=decoders))
        row(f"folder: {len(files)} mp3 clips -> srt+json (CLI loop)", clips_s, time.perf_counter() - t)

    async def long_once(paths: list[Path]) -> tuple[float, int]:
        from asr.pipeline.formats import render

        pipeline = Pipeline(settings, engine, decoders=decoders)
        await pipeline.start()
        try:
            await pipeline.transcribe(inputs["short"], Options(vad=True), background=True)  # VAD warm
            t0 = time.perf_counter()
            results = await asyncio.gather(*(pipeline.transcribe(p, Options(), background=True) for p in paths))
            for r in results:
                render(r, "srt")
            return time.perf_counter() - t0, len(results[0].segments)
        finally:
            await pipeline.stop()

    seconds, segments = asyncio.run(long_once([inputs["long"]]))
    row("long: one mp3 -> srt (VAD, punctuation, ITN)", long_s, seconds, segments=segments)
    if many and len(long_files) > 1 and file_worker_count(settings, long_files) == 1:
        seconds, _ = asyncio.run(long_once(long_files))
        row(f"long: {len(long_files)} mp3 in one call -> srt", long_s * len(long_files), seconds)
    return rows


def _worker_rows(settings: Any, engine: Any, files: list[Path], long_files: list[Path], n: int, out_dir: Path,
                 row: Any, clips_s: float, long_s: float) -> None:
    """The folder row, and the long files together when there are several, through `n` file
    workers (asr/file_workers.py), started once as the command line starts them."""
    from asr.file_workers import FileWorkers
    from asr.pipeline.options import Options

    workers = FileWorkers(settings, n)
    workers.start(Options())

    async def timed(paths: list[Path], formats: list[str], to: Path) -> float:
        t = time.perf_counter()
        outcomes = await workers.transcribe([(p, to / p.stem) for p in paths], formats)
        failed = [o for o in outcomes if o.error]
        if failed:
            raise RuntimeError(f"{len(failed)} files failed, first {failed[0].path}: {failed[0].error}")
        return time.perf_counter() - t

    async def run() -> None:
        async with workers.serving(engine):
            await timed(files[:64], ["srt", "json"], out_dir)  # warm-up, as the one-process row
            row(f"folder: {len(files)} mp3 clips -> srt+json (CLI, {n} file workers)", clips_s,
                await timed(files, ["srt", "json"], out_dir))
            if len(long_files) > 1:
                row(f"long: {len(long_files)} mp3 in one call -> srt (CLI, {n} file workers)",
                    long_s * len(long_files), await timed(long_files, ["srt"], out_dir / "long"))

    try:
        asyncio.run(run())
    finally:
        workers.close()


def _engine_row(engine: Any, clips: list[np.ndarray], where: str = "") -> dict[str, Any]:
    import torch

    engine.transcribe(clips[:64])
    best = None
    for _ in range(3):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        engine.transcribe(clips)
        seconds = time.perf_counter() - t
        best = seconds if best is None else min(best, seconds)
    audio_s = sum(len(c) for c in clips) / SAMPLE_RATE
    out = {"row": f"engine{where}: the folder's {len(clips)} clips, decoded, one call (best of 3)",
           "audio_s": round(audio_s, 1), "wall_s": round(best, 3), "x_real_time": round(audio_s / best, 1)}
    print(json.dumps(out), flush=True)
    return out


def _cold_start(args: argparse.Namespace, short: Path, out_dir: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "asr", "transcribe", str(short), "--model", args.model, "--format", "txt",
           "--output-dir", str(out_dir), "--quiet"]
    if args.config:
        cmd += ["--config", args.config]
    if args.punc_model:
        cmd += ["--punc-model", args.punc_model]
    walls = []
    for _ in range(2):  # the first also fills compiler caches (Triton's) a user's later runs reuse
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        walls.append(round(time.perf_counter() - t, 2))
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            break
    out = {"row": "cold start: python -m asr transcribe one 10 s mp3 (new process; first run, then again)",
           "wall_s": walls[0], "again_s": walls[-1], "returncode": proc.returncode}
    print(json.dumps(out), flush=True)
    return out


def _service_rows(args: argparse.Namespace, punc_dir: Path, work: Path) -> list[dict[str, Any]]:
    """The HTTP service as users start it, once per worker count, under the load client."""
    import os
    import signal
    import urllib.request

    root = Path(__file__).resolve().parents[2]
    if not (root / "tests" / "load.py").is_file() or not (root / "webui.py").is_file():
        raise SystemExit("--service-workers needs a checkout of the repository (webui.py, tests/load.py)")
    sys.path.insert(0, str(root))
    from tests.load import make_clips, run_load_processes

    clips = {fmt: make_clips(seconds=30.0, fmt=fmt) for fmt in ("wav", "mp3")}
    rows = []
    for workers in args.service_workers:
        port = 7990 + workers
        cmd = [sys.executable, str(root / "webui.py"), "--no-ui", "--model", args.model, "--port", str(port),
               "--http-workers", str(workers), "--data-dir", str(work / f"data-w{workers}")]
        if args.config:
            cmd += ["--config", args.config]
        env = {**os.environ, "ASR_LONGFORM__PUNC_MODEL": str(punc_dir)}
        log = open(work / f"server-w{workers}.log", "w")  # noqa: SIM115 - closed below
        t0 = time.perf_counter()
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        ready = None
        while ready is None and server.poll() is None and time.perf_counter() - t0 < 600:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
                    ready = time.perf_counter() - t0 if resp.status == 200 else None
            except OSError:
                time.sleep(0.25)
        try:
            if ready is None:
                rows.append({"row": f"service, {workers} HTTP worker(s)", "error": "not ready (see the server log)"})
                continue
            for fmt, clients in (("wav", 150), ("wav", 300), ("mp3", 150)):
                report = run_load_processes(url, duration_s=args.load_seconds, concurrency=clients,
                                            processes=args.load_processes, pid=server.pid, clips=clips[fmt])
                summary = report.summary()
                row = {"row": f"service, {workers} HTTP worker(s), {clients} clients, 30 s {fmt}",
                       "ready_s": round(ready, 1), "audio_s_per_s": summary["audio_s_per_s"],
                       **{k: summary[k] for k in ("ok", "errors", "busy_503", "latency_p50_s", "latency_p95_s",
                                                  "latency_p99_s", "rss_mb_peak", "server_cpu_s")}}
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            log.close()
    return rows


def _funasr_long(args: argparse.Namespace, audio: np.ndarray, punc_dir: Path, work: Path) -> dict[str, Any]:
    import torch
    from funasr import AutoModel

    from asr.pipeline.vad import make_fsmn_vad_dir

    vad_dir = make_fsmn_vad_dir(work / "fsmn-vad", seed=0, decibel_thres=-30.0)
    model = AutoModel(model=args.model, vad_model=str(vad_dir), punc_model=str(punc_dir),
                      device="cuda" if torch.cuda.is_available() else "cpu", disable_update=True,
                      disable_pbar=True, log_level="ERROR")
    model.generate(input=audio[: 60 * SAMPLE_RATE], batch_size_s=300)
    t = time.perf_counter()
    model.generate(input=audio, batch_size_s=300)
    seconds = time.perf_counter() - t
    audio_s = len(audio) / SAMPLE_RATE
    out = {"row": "funasr: FSMN-VAD + model + CT-Transformer on the long recording, decoded, batch_size_s=300",
           "audio_s": round(audio_s, 1), "wall_s": round(seconds, 3), "x_real_time": round(audio_s / seconds, 1)}
    print(json.dumps(out), flush=True)
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from asr.engine import Engine
    from asr.engine.process import EngineProcess, load_engine
    from asr.runtime import configure_process, usable_cores
    from asr.settings import load_settings, resolve_config

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    inputs = make_inputs(work, _speech(args.speech), args.clips, args.long_minutes, args.long_files)
    print(f"inputs made in {time.perf_counter() - t:.1f} s under {work}", file=sys.stderr)
    model_dir = Path(args.model)
    if not args.punc_model:
        args.punc_model = str(make_full_punc(work / "punc", model_dir))
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__, "python": platform.python_version(), "cores": usable_cores(),
        "rows": [],
    }
    result["rows"].append(_cold_start(args, inputs["short"], work / "out-cold"))
    base = load_settings(resolve_config(args.config) if args.config else None,
                         engine={"model": args.model, "warmup": False},
                         longform={"punc_model": args.punc_model, "punc_device": args.punc_device})
    configure_process(base)
    engine = Engine.from_settings(base.engine)
    result["rows"].append(_engine_row(engine, inputs["clips"]))
    parallel = base.model_copy(deep=True)
    default = load_engine(base.engine)  # what users run: in a process of its own on a GPU
    if isinstance(default, EngineProcess):
        result["rows"].append(_engine_row(default, inputs["clips"], " in its own process"))
        result["rows"] += _pipeline_rows(parallel, default, inputs, "defaults (engine process)", work / "out")
        if args.in_process_too:
            result["rows"] += _pipeline_rows(parallel, engine, inputs, "engine in this process", work / "out-in")
        default.close()
    else:
        result["rows"] += _pipeline_rows(parallel, engine, inputs, "parallel (defaults)", work / "out")
    if not args.skip_serial:
        serial = load_settings(resolve_config(args.config) if args.config else None,
                               engine={"model": args.model, "warmup": False},
                               longform={"punc_model": args.punc_model, "punc_device": args.punc_device,
                                         "vad_workers": 1},
                               pipeline={"decode_processes": 0})
        result["rows"] += _pipeline_rows(serial, engine, inputs, "serial (vad_workers=1, decode_processes=0)",
                                         work / "out-serial", many=False)
    if args.funasr:
        result["rows"].append(_funasr_long(args, inputs["long_audio"], Path(args.punc_model), work))
    if args.service_workers:
        result["rows"] += _service_rows(args, Path(args.punc_model), work)
    text = json.dumps(result, indent=1, ensure_ascii=False)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    print("\n| row | setting | audio s | wall s | x real time |\n|---|---|---|---|---|")
    for r in result["rows"]:
        wall = f"{r['wall_s']} (then {r['again_s']})" if "again_s" in r else r.get("wall_s", "")
        if "audio_s_per_s" in r:  # a service row
            print(f"| {r['row']} | ready after {r['ready_s']} s | - | p50/p95/p99 {r['latency_p50_s']}/"
                  f"{r['latency_p95_s']}/{r['latency_p99_s']} s, {r['errors']} errors "
                  f"| {r['audio_s_per_s']} audio-s/s |")
            continue
        print(f"| {r['row']} | {r.get('setting', '')} | {r.get('audio_s', '')} | {wall} "
              f"| {r.get('x_real_time', '')} |")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench-e2e", help="what users run (folders, long recordings, cold start) beside the engine")
    p.add_argument("--model", required=True, help="model directory (e.g. from make-model --size full)")
    p.add_argument("--speech", required=True, help="a WAV of real speech the inputs are cut from")
    p.add_argument("--config", help="configs/<name>.yaml (e.g. h100)")
    p.add_argument("--punc-model", help="punctuation model dir (default: a full-size random one)")
    p.add_argument("--punc-device", default="auto")
    p.add_argument("--clips", type=int, default=300)
    p.add_argument("--long-minutes", type=float, default=60.0)
    p.add_argument("--long-files", type=int, default=10)
    p.add_argument("--skip-serial", action="store_true", help="skip the rows with the parallel parts off")
    p.add_argument("--in-process-too", action="store_true",
                   help="where the engine runs in a process of its own, also the rows with it in this one")
    p.add_argument("--funasr", action="store_true", help="also funasr's own VAD pipeline on the long recording")
    p.add_argument("--service-workers", type=int, nargs="+", metavar="W",
                   help="also the HTTP service under load, started with each of these --http-workers counts")
    p.add_argument("--load-seconds", type=float, default=20.0, help="each service row's load duration")
    p.add_argument("--load-processes", type=int, default=6, help="client processes of the load client")
    p.add_argument("--work", help="keep the inputs and outputs here (default: a temporary folder)")
    p.add_argument("--out", help="write the JSON result here")
    p.set_defaults(func=run)

