"""N long mp3 files through one pipeline, with the engine's share of the time: where a folder of
long recordings spends it (BENCHMARKS.md, "What users run").

    PYTHONPATH=. python benchmarks/long_files.py --model models/full --speech speech.wav --files 10

The inputs are bench-e2e's (asr/devtools/bench_e2e.py): `--minutes` mp3 cut from `--speech`, under
`--work`; a full-size random CT-Transformer is made there too. Prints one JSON line: wall time,
x real time, the engine's batches and their summed time, graph captures, segments, tokens.
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
    p.add_argument("--speech", required=True, help="a 16 kHz WAV of speech the inputs are cut from")
    p.add_argument("--files", type=int, default=10)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--config", default="h100")
    p.add_argument("--work", default="/tmp/e2e")
    args = p.parse_args()

    from asr.devtools.bench_e2e import _speech, make_full_punc, make_inputs
    from asr.engine import Engine
    from asr.pipeline.options import Options
    from asr.pipeline.pipeline import Pipeline
    from asr.runtime import configure_process
    from asr.settings import load_settings, resolve_config

    work = Path(args.work)
    if not (work / "long" / f"long{args.files - 1:02d}.mp3").exists():
        make_inputs(work, _speech(args.speech), 0, args.minutes, args.files)
    punc = work / "punc"
    if not (punc / "model.pt").exists():
        make_full_punc(punc, Path(args.model))
    settings = load_settings(
        resolve_config(args.config),
        engine={"model": args.model, "warmup": False},
        longform={"punc_model": str(punc), "punc_device": "auto"},
    )
    configure_process(settings)
    engine = Engine.from_settings(settings.engine)
    batches: list[tuple[int, float, float]] = []

    async def run() -> None:
        pipeline = Pipeline(settings, engine, on_batch=lambda b: batches.append((b.size, b.audio_s, b.elapsed_s)))
        await pipeline.start()
        try:
            await pipeline.transcribe(work / "ten_seconds.mp3", Options(vad=True), background=True)  # warm
            files = sorted((work / "long").glob("*.mp3"))[: args.files]
            batches.clear()
            t = time.perf_counter()
            results = await asyncio.gather(*(pipeline.transcribe(f, Options(), background=True) for f in files))
            wall = time.perf_counter() - t
        finally:
            await pipeline.stop()
        audio_s = sum(r.duration_ms for r in results) / 1000
        print(json.dumps({
            "files": len(files), "audio_s": round(audio_s, 1), "wall_s": round(wall, 2),
            "x_real_time": round(audio_s / wall, 1), "batches": len(batches),
            "engine_s": round(sum(b[2] for b in batches), 2),
            "rows_mean": round(sum(b[0] for b in batches) / max(1, len(batches)), 1),
            "graph_captures": engine.info().get("cuda_graph_captures"),
            "segments": sum(len(r.segments) for r in results), "tokens": sum(len(r.tokens) for r in results),
        }), flush=True)  # fmt: skip

    asyncio.run(run())


if __name__ == "__main__":  # decoding processes are spawned: they import this module
    main()
