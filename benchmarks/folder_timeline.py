"""Where a folder of mp3 files spends its time in the command line's own loop: the engine's calls
(when, how many rows, how long) against the wall, as users run it (the engine in a process of its
own on a GPU; `--in-process` keeps it in this one), with the pipeline in this process or in
`--workers N` file workers (asr/file_workers.py).

    PYTHONPATH=. python benchmarks/folder_timeline.py --model models/full --speech speech.wav
    PYTHONPATH=. python benchmarks/folder_timeline.py ... --workers 4
    PYTHONPATH=. python benchmarks/folder_timeline.py ... --folder /tmp/e2e/long --passes 1   # long files

The inputs are bench-e2e's (asr/devtools/bench_e2e.py): `--clips` mp3 clips of 3-28 s cut from
`--speech`, under `--work`, and a full-size random CT-Transformer there (`--folder`: another
folder). One warm-up pass over the first 64 clips, then `--passes` timed passes over the
folder. Prints one JSON line a pass: wall, x real time, the engine's calls (count, rows p50 / max,
summed seconds, the engine's idle time between the first call and the last) and when the first
and last call started and ended.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--speech", required=True, help="a 16 kHz WAV of speech the clips are cut from")
    p.add_argument("--clips", type=int, default=300)
    p.add_argument("--config", default="h100")
    p.add_argument("--work", default="/tmp/e2e")
    p.add_argument("--punc-model", help="default: a full-size random one under --work")
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--in-process", action="store_true", help="the engine in this process")
    p.add_argument("--workers", type=int, default=1, help="file worker processes (1: the pipeline here)")
    p.add_argument("--folder", help="time this folder's files instead of the clips (warm-up: the clips)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a setting for this run (e.g. pipeline.files_in_flight=128)")
    args = p.parse_args()

    from asr.cli import _transcribe_files, find_audio_files, output_targets
    from asr.devtools.bench_e2e import _speech, make_full_punc, make_inputs
    from asr.engine import Engine
    from asr.engine.process import load_engine
    from asr.file_workers import FileWorkers
    from asr.pipeline.options import Options
    from asr.pipeline.pipeline import start_decoders
    from asr.runtime import configure_process
    from asr.settings import load_settings, resolve_config

    work = Path(args.work)
    folder = work / "clips"
    if not (folder / f"clip{args.clips - 1:04d}.mp3").exists():
        make_inputs(work, _speech(args.speech), args.clips, 1.0, 1)
    punc = Path(args.punc_model) if args.punc_model else work / "punc"
    if not (punc / "model.pt").exists():
        make_full_punc(punc, Path(args.model))
    overrides: dict[str, dict[str, object]] = {"engine": {"model": args.model, "warmup": False},
                                               "longform": {"punc_model": str(punc), "punc_device": "auto"}}
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        parsed = None if value in ("", "null") else json.loads(value) if value[:1] in "0123456789-[{tf" else value
        overrides.setdefault(section, {})[name] = parsed
    settings = load_settings(resolve_config(args.config), **overrides)
    configure_process(settings)
    workers = FileWorkers(settings, args.workers) if args.workers > 1 else None
    if workers is not None:
        workers.start(Options())
    engine = Engine.from_settings(settings.engine) if args.in_process else load_engine(settings.engine)
    calls: list[tuple[float, float, int, float]] = []
    transcribe = engine.transcribe

    def timed_transcribe(audios, hotwords=None, **k):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = transcribe(audios, hotwords, **k)
        calls.append((start, time.perf_counter(), len(audios), sum(len(a) for a in audios) / 16000))
        return out

    engine.transcribe = timed_transcribe  # type: ignore[method-assign]
    warm = find_audio_files([str(folder)])[:64]
    timed = find_audio_files([args.folder]) if args.folder else find_audio_files([str(folder)])[: args.clips]
    out_dir = work / "out-folder"
    decoders = start_decoders(settings) if workers is None else None

    async def one_pass(files: list[Path]) -> None:
        out = argparse.Namespace(output_dir=str(out_dir), format=["srt", "json"], quiet=True,
                                 inputs=[str(files[0].parent)])
        if workers is None:
            await _transcribe_files(settings, engine, files, Options(), out, decoders=decoders)
        else:
            targets = output_targets(files, out)
            outcomes = await workers.transcribe([(f, targets[f]) for f in files], out.format)
            assert not [o for o in outcomes if o.error], [o for o in outcomes if o.error][:3]

    def report(n: int, files: list[Path], wall: float, t0: float) -> None:
        audio_s = sum(json.loads((out_dir / f"{f.stem}.json").read_text())["duration_ms"] for f in files) / 1000
        rows = sorted(c[2] for c in calls)
        busy = sum(c[1] - c[0] for c in calls)
        span = (calls[-1][1] - calls[0][0]) if calls else 0.0
        print(json.dumps({
            "pass": n, "files": len(files), "audio_s": round(audio_s, 1), "wall_s": round(wall, 3),
            "x_real_time": round(audio_s / wall, 1), "engine_calls": len(calls),
            "rows_p50_max": [rows[len(rows) // 2], rows[-1]] if rows else None,
            "engine_s": round(busy, 3), "engine_idle_in_span_s": round(span - busy, 3),
            "first_call": [round(calls[0][0] - t0, 3), round(calls[0][1] - t0, 3)] if calls else None,
            "last_call": [round(calls[-1][0] - t0, 3), round(calls[-1][1] - t0, 3)] if calls else None,
            "engine_in_process": args.in_process, "workers": args.workers, "set": args.set,
        }), flush=True)  # fmt: skip

    async def run() -> None:
        await one_pass(warm)
        for n in range(args.passes):
            calls.clear()
            t0 = time.perf_counter()
            await one_pass(timed)
            report(n, timed, time.perf_counter() - t0, t0)

    async def serve() -> None:
        assert workers is not None
        async with workers.serving(engine):
            await run()

    try:
        asyncio.run(run() if workers is None else serve())
    finally:
        if decoders is not None:
            decoders.shutdown(wait=False, cancel_futures=True)
        if workers is not None:
            workers.close()
        close = getattr(engine, "close", None)
        if close is not None:
            close()


if __name__ == "__main__":  # decoding processes are spawned: they import this module
    main()
