"""Command line: `python -m asr transcribe FILE_OR_DIR...`, `make-model`, `bench`, `export-onnx`,
`transcribe-archive` (Ray Data), `serve-ray` (Ray Serve)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asr.errors import ASRError

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from asr.file_workers import FileWorkers
    from asr.pipeline.models import StageModels
    from asr.pipeline.options import Options
    from asr.pipeline.pipeline import EngineLike
    from asr.pipeline.result import Result
    from asr.settings import Settings

AUDIO_SUFFIXES = {".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".webm", ".mp4",
                  ".wma", ".amr", ".aiff", ".aif", ".mka"}


def find_audio_files(paths: Sequence[str]) -> list[Path]:
    """Files as given, and audio files found recursively under directories, sorted."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            found.append(path)
    return found


def _output_name(path: Path, roots: list[Path]) -> str:
    for root in roots:
        if root.is_dir() and path.is_relative_to(root):
            return str(path.relative_to(root).with_suffix(""))
    return path.stem


def distinct_names(names: dict[str, str]) -> dict[str, str]:
    """Output names (without the output's suffix) made distinct: where recordings would share one
    (`a.wav` and `a.mp3` in one folder), each keeps its own extension (`a.wav.srt`, `a.mp3.srt`)
    instead of the second overwriting the first's files. Keys are the recordings' paths."""
    seen: dict[str, int] = {}
    for name in names.values():
        seen[name.casefold()] = seen.get(name.casefold(), 0) + 1
    return {path: name + Path(path).suffix if seen[name.casefold()] > 1 else name
            for path, name in names.items()}


def write_outputs(result: Result, target: Path, formats: Sequence[str]) -> None:
    """One recording's outputs: `target` plus each format's suffix (folders made as needed)."""
    from asr.pipeline.formats import render

    for fmt in formats:
        path = target.with_name(f"{target.name}.{fmt}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(result, fmt), encoding="utf-8")


def build_settings(args: argparse.Namespace) -> Settings:
    """The settings of a command with the recognition arguments (`add_recognition_arguments`)."""
    from asr.settings import load_settings, resolve_config

    overrides: dict = {"engine": {"warmup": False}, "longform": {}, "server": {}, "pipeline": {}}
    if getattr(args, "workers", None) is not None:
        overrides["pipeline"]["file_workers"] = args.workers
    for key in ("model", "device", "dtype", "attention"):
        if getattr(args, key):
            overrides["engine"][key] = getattr(args, key)
    for key, name in (("vad", "vad_backend"), ("vad_model", "vad_model"), ("punc_model", "punc_model"),
                      ("speaker_model", "speaker_model")):
        if getattr(args, name):
            overrides["longform"][key] = getattr(args, name)
    if args.data_dir:
        overrides["server"]["data_dir"] = args.data_dir
    return load_settings(resolve_config(args.config), **overrides)


def build_options(args: argparse.Namespace, settings: Settings) -> Options:
    """The recognition options of a command with the recognition arguments."""
    from asr.errors import ConfigError
    from asr.pipeline.options import Options

    hotword_text = args.hotwords or ""
    if args.hotword_file:
        try:
            hotword_text += "\n" + Path(args.hotword_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the hotword file {args.hotword_file}: {exc}") from exc
    switch = {None: "auto", True: "on", False: "off"}
    options = Options.from_form(
        hotwords=hotword_text, vad=switch[args.vad], punc=switch[args.punc],
        speakers=args.speakers is not None, num_speakers=args.speakers or None, itn=switch[args.itn],
        hotword_sets=args.hotword_set or [], hotword_diff=args.hotword_diff, channels=args.channels,
        channel_names=args.channel_names or "",
        max_hotwords=settings.limits.max_hotwords, max_hotword_chars=settings.limits.max_hotword_chars,
    )
    if options.hotword_sets:
        options = _resolve_sets(settings, options)
    return options


def cmd_transcribe(args: argparse.Namespace) -> int:
    from asr.engine.process import load_engine
    from asr.file_workers import file_worker_count
    from asr.pipeline.models import EngineNetworks
    from asr.pipeline.pipeline import start_decoders
    from asr.runtime import configure_process, start_cuda_warmup

    missing = [name for name in args.inputs if not Path(name).exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    settings = build_settings(args)
    options = build_options(args, settings)
    settings = _only_what_is_used(settings, options)
    files = find_audio_files(args.inputs)
    if not files:
        print("no audio files found", file=sys.stderr)
        return 2
    configure_process(settings)
    input_bytes = sum(Path(f).stat().st_size for f in files)
    workers = file_worker_count(settings, files)
    if workers > 1:
        code = _transcribe_with_workers(settings, files, options, args, workers, input_bytes)
    else:
        start_cuda_warmup(settings.engine)
        # The decoding processes start first: they import FFmpeg's bindings while the models load.
        decoders = start_decoders(settings)
        try:
            networks = EngineNetworks(settings, input_bytes)
            models = _preload_models(settings, options, networks=networks)
            engine = load_engine(settings.engine, input_bytes=input_bytes)
            networks.start(engine)
            try:
                code = asyncio.run(_transcribe_files(settings, engine, files, options, args, models, decoders))
            finally:
                engine.close()
        finally:
            if decoders is not None:
                # Waited for: that drops the pool's queues, whose semaphores multiprocessing's
                # tracker would otherwise report as leaked once the command leaves by os._exit.
                decoders.shutdown(wait=True, cancel_futures=True)
    global finished_transcribing
    finished_transcribing = True
    return code


def _transcribe_with_workers(settings: Settings, files: list[Path], options: Options, args: argparse.Namespace,
                             n: int, input_bytes: int) -> int:
    from asr.engine.process import load_engine
    from asr.file_workers import FileWorkers

    workers = FileWorkers(settings, n)
    try:
        workers.start(options)  # they import and load their models while the engine loads
        engine = load_engine(settings.engine, input_bytes=input_bytes)
        try:
            return asyncio.run(_transcribe_in_workers(workers, engine, files, args))
        finally:
            engine.close()
    finally:
        workers.close()


finished_transcribing = False
"""Set when `transcribe` ended normally: every output is written and closed, the engine and the
decoding processes are told to stop. `python -m asr` then leaves without the interpreter's
teardown (see asr/__main__.py)."""


def _only_what_is_used(settings: Settings, options: Options) -> Settings:
    """The settings without the models these options switch off: the pipeline loads ITN's grammars
    and the punctuation model when it starts (a service's requests may ask for them), a command
    whose every file says --no-punc / --no-itn need not wait for them, nor warn that one is
    missing."""
    longform, pipeline = {}, {}
    if not options.punctuation:
        longform["punc_model"] = ""
    if options.itn is False:
        pipeline["itn"] = False
    return settings.model_copy(update={
        "longform": settings.longform.model_copy(update=longform),
        "pipeline": settings.pipeline.model_copy(update=pipeline),
    })


def _preload_models(settings: Settings, options: Options, link: Any = None, networks: Any = None) -> StageModels:
    """`link`: a file worker's `HubLink`, `networks`: the command's `EngineNetworks` (where the
    punctuation and VAD networks may run instead of here)."""
    from asr.pipeline.models import StageModels

    models = StageModels(settings.longform, settings.engine.model_cache)
    if link is not None:
        link.use_served_models(models, settings.longform)
    if networks is not None:
        networks.attach(models)
    models.preload(itn=settings.pipeline.itn if options.itn is None else options.itn,
                   punctuation=options.punctuation)
    return models


def _resolve_sets(settings: Settings, options: Options) -> Options:
    """The named sets from the server's database (`server.jobs_db`, or `<data_dir>/jobs.sqlite3`),
    read as they are now; the CLI never writes it."""
    from asr.service.hotword_sets import HotwordSetStore

    db = settings.server.jobs_db or Path(settings.server.data_dir) / "jobs.sqlite3"
    store = HotwordSetStore.open_existing(db, settings.limits)
    try:
        return store.resolve(options)
    finally:
        store.close()


async def _transcribe_files(
    settings: Settings, engine: EngineLike, files: list[Path], options: Options, args: argparse.Namespace,
    models: StageModels | None = None, decoders: ProcessPoolExecutor | None = None,
) -> int:
    """Every file through the one pipeline, `pipeline.files_in_flight` at a time, so the scheduler
    batches segments of many files together; outputs are written as each file finishes."""
    from asr.pipeline.pipeline import Pipeline

    pipeline = Pipeline(settings, engine, models=models, decoders=decoders)
    await pipeline.start()
    targets = output_targets(files, args)
    report = _Report(len(files), args)
    slots = asyncio.Semaphore(settings.pipeline.files_in_flight)

    async def one(path: Path) -> None:
        try:
            result = await pipeline.transcribe(path, options, background=True)
            await asyncio.to_thread(write_outputs, result, targets[path], args.format)
        except ASRError as exc:
            report.ended(path, str(exc))
        else:
            report.ended(path, None, [(n.code, n.message) for n in result.notices])
        finally:
            slots.release()

    try:
        tasks = []
        for path in files:
            await slots.acquire()
            tasks.append(asyncio.create_task(one(path)))
        await asyncio.gather(*tasks)
    finally:
        report.close()
        await pipeline.stop()
    return report.summary()


async def _transcribe_in_workers(workers: FileWorkers, engine: EngineLike, files: list[Path],
                                 args: argparse.Namespace) -> int:
    """Every file through the worker processes' pipelines (asr/file_workers.py), all feeding
    `engine` through one scheduler here."""
    targets = output_targets(files, args)
    report = _Report(len(files), args)
    try:
        async with workers.serving(engine):
            await workers.transcribe([(p, targets[p]) for p in files], args.format,
                                     lambda o: report.ended(o.path, o.error, o.notices))
    finally:
        report.close()
    return report.summary()


def output_targets(files: list[Path], args: argparse.Namespace) -> dict[Path, Path]:
    """Each recording's output path without the format's suffix, under `--output-dir`."""
    roots = [Path(p) for p in args.inputs]
    names = distinct_names({str(p): _output_name(p, roots) for p in files})
    return {p: Path(args.output_dir) / names[str(p)] for p in files}


class _Report:
    """The progress bar, each failure and each kind of notice once, and the closing line."""

    def __init__(self, total: int, args: argparse.Namespace) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.out_dir = args.output_dir
        self.done = self.failed = 0
        self.noticed: set[str] = set()
        self.bar = tqdm(total=total, unit="file", disable=args.quiet or None)

    def ended(self, path: Path | str, error: str | None, notices: Sequence[tuple[str, str]] = ()) -> None:
        if error is not None:
            self.failed += 1
            self._tqdm.write(f"FAILED {path}: {error}", file=sys.stderr)
        else:
            self.done += 1
            for code, message in notices:
                if code not in self.noticed:  # once per run, not once per file
                    self.noticed.add(code)
                    self._tqdm.write(message, file=sys.stderr)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()

    def summary(self) -> int:
        print(f"{self.done} transcribed, {self.failed} failed; outputs in {self.out_dir}", file=sys.stderr)
        return 1 if self.failed else 0


def cmd_make_model(args: argparse.Namespace) -> int:
    from asr.devtools.testmodel import make_model_dir

    path = make_model_dir(args.output, args.size, seed=args.seed)
    print(path)
    return 0


def add_recognition_arguments(tr: argparse.ArgumentParser) -> None:
    """The hotword, model and pipeline arguments of `transcribe` and `transcribe-archive`."""
    tr.add_argument("--hotwords", help="hotwords, separated by spaces, commas or new lines")
    tr.add_argument("--hotword-file", help="a text file of hotwords, one per line")
    tr.add_argument("--hotword-set", action="append", metavar="NAME",
                    help="a named hotword set of the server (words and corrections; repeat for more), read "
                    "from the server's database in --data-dir")
    tr.add_argument("--data-dir", help="the server's data directory, for --hotword-set (server.data_dir)")
    tr.add_argument("--hotword-diff", action="store_true",
                    help="also recognise without the hotwords and record where the text differs (hotword_diff)")
    tr.add_argument("--channels", choices=["mix", "split"], default="mix",
                    help="mix: channels averaged (default); split: each channel recognised on its own and "
                    "labelled (two-channel call recordings)")
    tr.add_argument("--channel-names", metavar="A,B",
                    help="with --channels split: names for channels 1, 2, ... (e.g. 坐席,客户)")
    tr.add_argument("--model", help="model directory or ModelScope id")
    tr.add_argument("--config", help="settings YAML, a profile name (configs/<name>.yaml) or auto (by GPU)")
    tr.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    tr.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16", "int8"])
    tr.add_argument("--attention", choices=["auto", "flash-attn", "varlen", "sdpa", "eager"])
    tr.add_argument("--vad", action=argparse.BooleanOptionalAction, default=None,
                    help="cut recordings into speech segments (sentence timestamps, any length); "
                    "default: on for files longer than longform.auto_vad_s (45 s)")
    tr.add_argument("--punc", action=argparse.BooleanOptionalAction, default=None,
                    help="add punctuation (CT-Transformer); default: on whenever the model is "
                    "available")
    tr.add_argument("--itn", action=argparse.BooleanOptionalAction, default=None,
                    help="write numbers, dates, money as digits (2026年12月1日, 5%%); default: the "
                    "pipeline.itn setting (on)")
    tr.add_argument("--speakers", nargs="?", type=int, const=0, default=None, metavar="N",
                    help="label sentences with speakers (CAM++); N = number of speakers, "
                    "omitted = estimate")
    tr.add_argument("--vad-backend", choices=["silero", "fsmn"], help="VAD model (default silero)")
    tr.add_argument("--vad-model", help="FSMN-VAD model directory or ModelScope id")
    tr.add_argument("--punc-model", help="punctuation model directory or ModelScope id")
    tr.add_argument("--speaker-model", help="CAM++ model directory or ModelScope id")


def _worker_count(text: str) -> int:
    """`--workers`: 'auto' (-1) or a count of at least 1."""
    if text == "auto":
        return -1
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a number of at least 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from asr.pipeline.formats import FORMATS

    parser = argparse.ArgumentParser(prog="python -m asr", description="SeACo-Paraformer speech recognition")
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("transcribe", help="transcribe audio files or folders")
    tr.add_argument("inputs", nargs="+", help="audio files and/or folders (searched recursively)")
    tr.add_argument("--format", nargs="+", choices=FORMATS, default=["txt"], help="output formats")
    tr.add_argument("--output-dir", default="transcripts")
    add_recognition_arguments(tr)
    tr.add_argument("--workers", type=_worker_count, metavar="N|auto",
                    help="processes that run the pipeline over the files, all feeding one engine; 1: this "
                    "process; auto: several on a GPU for 16+ files or 32+ MB (default: pipeline.file_workers)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_transcribe)

    mk = sub.add_parser("make-model", help="write a model directory with seeded random weights (tests, benchmarks)")
    mk.add_argument("output")
    mk.add_argument("--size", choices=["tiny", "full"], default="tiny")
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=cmd_make_model)

    from asr.devtools.bench import add_parser as add_bench
    from asr.devtools.bench_e2e import add_parser as add_bench_e2e
    from asr.devtools.bench_long import add_parser as add_bench_long
    from asr.devtools.export_onnx import add_parser as add_export_onnx

    add_bench(sub)
    add_bench_long(sub)
    add_bench_e2e(sub)
    add_export_onnx(sub)
    from asr.archive_ray import add_parser as add_transcribe_archive  # Ray itself only when it runs

    add_transcribe_archive(sub)
    from asr.serve_ray import add_parser as add_serve_ray

    add_serve_ray(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except ASRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
