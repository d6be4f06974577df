"""When the segments of N long mp3 files reach the engine, and when their assembly starts and
ends (BENCHMARKS.md, "Timelines of one and ten 60-min mp3 files").

    PYTHONPATH=. python benchmarks/long_timeline.py 1     # after benchmarks/long_files.py made the inputs
    PYTHONPATH=. python benchmarks/long_timeline.py 1 --replay
    PYTHONPATH=. python benchmarks/long_timeline.py 10 --engine-process   # as users run it on a GPU

`--replay` then runs the engine calls the pipeline made again, alone: first eagerly (CUDA graphs
set aside: what a batch of a shape seen for the first time costs when nothing runs beside it), then
the same batches one after the other twice (the first time captures their graphs), then all their
segments in one call (as the folder row's engine figure is taken), so the engine's time in the
pipeline can be told from the engine's time on these segments. `--profile-eager=FILE` writes
torch.profiler's tables of the eager replay there (host and device time by op, and the CUDA
runtime calls: where a first-seen shape's time goes). `--profile-first=FILE` writes the same
tables for the pipeline's first engine call (the one that costs several times the others).
`--passes=N` transcribes the files N times with the same engine (graphs captured in one pass
replay in the next), `--buckets=FRAMES,TOKENS` sets the CUDA graphs' padding steps (asr.engine.
graphs.FRAME_BUCKET and TOKEN_BUCKET) for the run: coarser steps, fewer distinct batch shapes.

The inputs and the full-size random punctuation model are long_files.py's, under /tmp/e2e. The
engine runs in this process (as long_files.py) unless `--engine-process` puts it in a process of
its own (`load_engine`, what the command line does on a GPU; no `--replay` then). Two pipeline
methods are wrapped to note the time of their first and last calls: `_Source.next_chunk` (a
segment cut by the VAD; `chunks_end` when the stream ends) and `Pipeline._assemble`; the assemblies'
punctuation and ITN are timed. Prints one JSON line: marks in seconds from the call, the engine's
batches (time, rows, seconds) first and last, the assemblies' punctuation and ITN seconds,
characters, files decoded in pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def main() -> None:
    from asr.engine import Engine
    from asr.engine.process import load_engine
    from asr.pipeline import pipeline as P
    from asr.pipeline.models import EngineNetworks, StageModels
    from asr.pipeline.options import Options
    from asr.runtime import configure_process
    from asr.settings import load_settings, resolve_config

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 1
    own_process = "--engine-process" in sys.argv
    replay = "--replay" in sys.argv and not own_process
    passes = int(_option("--passes", "1"))
    buckets = _option("--buckets", "")
    if buckets:
        from asr.engine import graphs as G

        G.FRAME_BUCKET, G.TOKEN_BUCKET = (int(x) for x in buckets.split(","))
    work = Path("/tmp/e2e")
    settings = load_settings(resolve_config("h100"), engine={"model": "models/full", "warmup": False},
                             longform={"punc_model": str(work / "punc"), "punc_device": "auto"})
    configure_process(settings)
    engine = load_engine(settings.engine) if own_process else Engine.from_settings(settings.engine)
    marks: dict[str, float] = {}
    t0 = [0.0]
    batches: list[tuple[float, int, float]] = []

    def mark(key: str) -> None:
        now = round(time.perf_counter() - t0[0], 3)
        marks.setdefault(key, now)
        marks[key + "_last"] = now

    next_chunk = P._Source.next_chunk
    assemble = P.Pipeline._assemble

    def noted_next_chunk(self, *a, **k):  # type: ignore[no-untyped-def]
        item = next_chunk(self, *a, **k)
        mark("chunk" if item is not None else "chunks_end")
        return item

    def noted_assemble(self, *a, **k):  # type: ignore[no-untyped-def]
        mark("assemble_start")
        result = assemble(self, *a, **k)
        mark("assemble_end")
        return result

    P._Source.next_chunk = noted_next_chunk  # type: ignore[method-assign]
    # What the assemblies spend in punctuation and ITN (seconds summed over the files).
    spent = {"punc_s": 0.0, "itn_s": 0.0}

    def timed_in(key: str, fn):  # type: ignore[no-untyped-def]
        def call(*a, **k):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - start
        return call

    from asr.pipeline.itn import InverseNormalizer

    P.punctuate_words = timed_in("punc_s", P.punctuate_words)
    InverseNormalizer.apply = timed_in("itn_s", InverseNormalizer.apply)  # type: ignore[method-assign]
    calls: list[tuple[list, object]] = []
    transcribe = engine.transcribe

    profile_first = _option("--profile-first", "")

    def recorded_transcribe(audios, hotwords=None, **k):  # type: ignore[no-untyped-def]
        calls.append((list(audios), hotwords))
        if profile_first and len(calls) == 1 and t0[0]:
            with _profiled(profile_first):
                return transcribe(audios, hotwords, **k)
        return transcribe(audios, hotwords, **k)

    engine.transcribe = recorded_transcribe  # type: ignore[method-assign]
    P.Pipeline._assemble = noted_assemble  # type: ignore[method-assign]

    async def run() -> None:
        def on_batch(b):  # type: ignore[no-untyped-def]
            batches.append((round(time.perf_counter() - t0[0], 3), b.size, round(b.elapsed_s, 3)))

        # As the command line builds it: with `longform.punc_in_engine` / `vad_in_engine` (in the
        # environment: ASR_LONGFORM__...) the networks run in the engine's process.
        models = StageModels(settings.longform, settings.engine.model_cache)
        networks = EngineNetworks(settings)
        networks.attach(models)
        networks.start(engine)
        pipeline = P.Pipeline(settings, engine, on_batch=on_batch, models=models)
        await pipeline.start()
        try:
            await pipeline.transcribe(work / "ten_seconds.mp3", Options(vad=True), background=True)  # warm
            for _ in range(passes):
                marks.clear()
                batches.clear()
                spent.update(punc_s=0.0, itn_s=0.0)
                files = sorted((work / "long").glob("*.mp3"))[:n]
                calls.clear()
                t0[0] = time.perf_counter()
                results = await asyncio.gather(*(pipeline.transcribe(f, Options(), background=True) for f in files))
                wall = time.perf_counter() - t0[0]
                graphs = getattr(engine, "_graphs", None)
                print(json.dumps({
                    "files": n, "wall": round(wall, 3), "audio": sum(r.duration_ms for r in results) / 1000,
                    "marks": marks, "batches": len(batches), "engine_s": round(sum(b[2] for b in batches), 3),
                    "first_batches": batches[:3], "last_batches": batches[-3:],
                    "assembly": {k: round(v, 3) for k, v in spent.items()},
                    "chars": sum(len(r.text) for r in results), "in_pieces": pipeline.decoded_in_pieces,
                    "captures": None if graphs is None else graphs.encoders.captures + graphs.decoders.captures,
                }), flush=True)  # fmt: skip
        finally:
            await pipeline.stop()

    asyncio.run(run())
    if own_process:
        engine.close()
    if replay:
        engine.transcribe = transcribe  # type: ignore[method-assign]
        import torch

        def timed(fn) -> float:  # type: ignore[no-untyped-def]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return round(time.perf_counter() - start, 3)

        segments = [a for audios, _ in calls for a in audios]
        lengths = sorted(len(a) / 16000 for a in segments)
        out = {"calls": len(calls), "segments": len(segments), "audio_s": round(sum(lengths), 1),
               "segment_s_p10_p50_p90_max": [round(lengths[int(q * (len(lengths) - 1))], 1)
                                             for q in (0.1, 0.5, 0.9, 1)]}
        graphed, engine._graphs = engine._graphs, None  # eager: as a shape's first batch runs
        out["same_calls_alone_eager"] = timed(lambda: [transcribe(a, h) for a, h in calls])
        profile_to = _option("--profile-eager", "")
        if profile_to:
            with _profiled(profile_to):
                out["same_calls_alone_eager_profiled"] = timed(lambda: [transcribe(a, h) for a, h in calls])
        engine._graphs = graphed
        for attempt in range(2):
            out[f"same_calls_alone_{attempt}"] = timed(lambda: [transcribe(a, h) for a, h in calls])
            out[f"one_call_{attempt}"] = timed(lambda: transcribe(segments))
        print(json.dumps(out), flush=True)


def _option(name: str, default: str) -> str:
    return next((a.split("=", 1)[1] for a in sys.argv if a.startswith(name + "=")), default)


@contextlib.contextmanager
def _profiled(path: str) -> Iterator[None]:
    """torch.profiler around the block; its tables by host time and by device time go to `path`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        yield
    table = prof.key_averages()
    sort_device = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    Path(path).write_text(
        table.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=50)
        + "\n\n" + table.table(sort_by=sort_device, row_limit=30, max_name_column_width=50))


if __name__ == "__main__":  # decoding processes are spawned: they import this module
    main()
