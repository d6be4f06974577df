"""`python -m asr transcribe-archive INPUT OUTPUT`: an archive of recordings through Ray Data.

The file list (a folder, or a text/CSV/Parquet manifest that Ray Data reads) becomes a dataset;
`Recognizer` actors, each holding one `Engine` and one `Pipeline` (so segments of a batch of files
share the engine's batches, as in `python -m asr transcribe`), turn batches of paths into rows;
the driver is the only writer: it appends each row to OUTPUT/results.jsonl (flushed line by line)
and writes the subtitle files. A path already in results.jsonl is skipped, both on a rerun
(resume) and when a retried batch (a worker died and Ray redid its batch) delivers it again, so
each file gets exactly one row.

Ray is an optional dependency (`pip install "ray[data]"`), imported only here and only when the
command runs. docs/archive.md has the command, the rows, resuming and where it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asr.errors import ASRError, ConfigError

if TYPE_CHECKING:
    from asr.pipeline.options import Options
    from asr.settings import Settings

RESULTS = "results.jsonl"
MANIFEST_SUFFIXES = {".txt": "text", ".lst": "text", ".csv": "csv", ".parquet": "parquet"}
INSTALL_HINT = 'transcribe-archive needs Ray Data: pip install "ray[data]"'


def import_ray() -> Any:
    """Ray, or a message naming the install command: the service itself never needs it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra's other half: pyarrow, pandas)
    except ImportError as exc:
        raise MissingRayError(f"{INSTALL_HINT} ({exc})") from exc
    return ray


class MissingRayError(ImportError):
    """Ray is not installed (not an ASRError: no HTTP status, the service never raises it)."""


# ---- the rows --------------------------------------------------------------------------------


def failure_row(path: str, exc: BaseException) -> dict[str, Any]:
    """A file that failed: its typed error code (`unsupported_format`, `corrupt_audio`, ...) or,
    for an error that is not ours, `internal` with the exception's type, so the archive goes on."""
    if isinstance(exc, (ASRError, DecodedError)):
        code, message = exc.code, str(exc)
    else:
        code, message = "internal", f"{type(exc).__name__}: {exc}"
    return {"path": path, "ok": False, "error_code": code, "error": message, "audio_s": 0.0, "result": ""}


class ResultLog:
    """OUTPUT/results.jsonl: one JSON object per file, appended and flushed as each arrives. The
    paths already written are kept in memory; `append` refuses a second row for one of them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, bool] = {}  # path -> ok
        if path.exists():
            self._read_existing()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def _read_existing(self) -> None:
        data = self.path.read_bytes()
        # A driver killed in the middle of a line leaves it unfinished: cut it off (its file is
        # redone), or the next row would be glued onto it.
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with self.path.open("r+b") as f:
                f.truncate(end)
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "path" in row:
                self.done[row["path"]] = bool(row.get("ok"))

    def append(self, row: dict[str, Any]) -> bool:
        if row["path"] in self.done:
            return False
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        self.done[row["path"]] = bool(row["ok"])
        return True

    def close(self) -> None:
        self._file.close()


def output_row(row: dict[str, Any]) -> dict[str, Any]:
    """What results.jsonl holds for a row from the actors: the Result as a JSON object."""
    out = {k: row.get(k, "") for k in ("path", "name", "ok", "error_code", "error", "audio_s", "processing_s",
                                         "worker", "decoded")}
    out["result"] = json.loads(row["result"]) if row["ok"] else None
    return out


# ---- the inputs ------------------------------------------------------------------------------


def list_inputs(ray: Any, source: str, column: str = "path") -> list[str]:
    """The recordings to transcribe: audio files under a folder (as `transcribe` finds them), or
    the `column` of a CSV/Parquet manifest or the lines of a text one, read by Ray Data (so a
    manifest may also live where Ray Data reads from, e.g. s3://). Relative paths in a local
    manifest are taken relative to the manifest's folder."""
    from asr.cli import find_audio_files

    local = Path(source)
    if local.is_dir():
        return [str(p) for p in find_audio_files([source])]
    kind = next((k for s, k in MANIFEST_SUFFIXES.items() if source.lower().endswith(s)), None)
    if kind is None:
        raise ConfigError(f"{source}: not a folder or a .txt/.lst/.csv/.parquet manifest")
    if kind == "text":
        rows = ray.data.read_text(source).take_all()
        paths = [r["text"].strip() for r in rows]
    else:
        ds = ray.data.read_csv(source) if kind == "csv" else ray.data.read_parquet(source)
        if column not in ds.columns():
            raise ConfigError(f"{source}: no column {column!r} (columns: {', '.join(ds.columns())})")
        paths = [str(r[column]) for r in ds.select_columns([column]).take_all()]
    paths = [p for p in paths if p and not p.startswith("#")]
    if local.is_file():
        paths = [p if Path(p).is_absolute() or "://" in p else str(local.parent / p) for p in paths]
    return list(dict.fromkeys(paths))  # once each, in manifest order


def output_names(paths: list[str], source: str) -> dict[str, str]:
    """Subtitle file names (without suffix) under OUTPUT: relative to the input folder, or for a
    manifest relative to the folder all its paths share, so that two `a.wav` in different folders
    do not overwrite each other's subtitles (nor `a.wav` and `a.mp3` in one: those keep their
    extensions). Computed over the whole list: the same on a rerun."""
    from asr.cli import distinct_names

    if Path(source).is_dir():  # the paths are as find_audio_files gave them: under `source`
        return distinct_names({p: str(Path(p).relative_to(source).with_suffix("")) for p in paths})
    local = [os.path.abspath(p) for p in paths if "://" not in p]
    if len(local) == 1:
        root = os.path.dirname(local[0])
    else:
        try:
            root = os.path.commonpath(local) if local else "/"
        except ValueError:  # different drives
            root = "/"
    return distinct_names({p: str(Path(os.path.relpath(os.path.abspath(p), root)).with_suffix(""))
                           if "://" not in p else Path(p).stem for p in paths})


# ---- decoding on CPU tasks (--cpu-decode) ------------------------------------------------------


def _no_extra_args() -> dict[str, Any]:
    return {}


class DecodedError(Exception):
    """A decoding task's typed error, carried to the recognizer as its code and message."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def decode_batch(batch: dict[str, Any], *, max_mb: float, max_audio_s: float) -> dict[str, Any]:
    """A Ray Data task on a CPU: files up to `max_mb` decoded whole to 16 kHz mono float32 (bytes),
    so GPU actors only recognise; larger files (and remote paths) go on as paths, for the actor's
    pipeline to stream. A file that fails keeps its error's code for its row."""
    from asr.pipeline.audio import decode_audio

    audio, codes, errors = [], [], []
    here = f"{socket.gethostname()}:{os.getpid()}"
    for path in batch["path"]:
        path = str(path)
        data, code, error = b"", "", ""
        try:
            if "://" not in path and os.path.getsize(path) <= max_mb * 1048576:
                data = decode_audio(path, max_duration_s=max_audio_s).astype(np.float32, copy=False).tobytes()
        except ASRError as exc:
            code, error = exc.code, exc.message
        except OSError:
            pass  # missing or unreadable: the pipeline reports it with its own code
        audio.append(data)
        codes.append(code)
        errors.append(error)
    return {**batch, "decoder": np.array([here] * len(audio), dtype=object),
            "audio_f32": np.array(audio, dtype=object), "decode_code": np.array(codes, dtype=object),
            "decode_error": np.array(errors, dtype=object)}


# ---- the actors ------------------------------------------------------------------------------


class Recognizer:
    """A Ray Data actor: one Engine (one GPU, or the CPU) and one Pipeline with its own event loop.
    Each call takes a batch of paths and transcribes them concurrently through the pipeline, so
    their segments share engine batches; a file that fails becomes a failure row.

    A worker that dies (killed, out of memory, a crash in native code) is restarted by Ray and its
    batch retried. So that one file that kills every worker cannot loop for ever, the actor counts
    attempts per file in `attempts_dir` (a file per path, on the worker's machine): a retried batch
    goes one file at a time, and a file already tried more than `max_retries` times becomes a
    `worker_crashed` row without being opened again."""

    def __init__(self, settings: Settings, options: Options, formats: list[str], attempts_dir: str = "",
                 max_retries: int = 2) -> None:
        from asr.engine import Engine
        from asr.pipeline.pipeline import Pipeline
        from asr.runtime import configure_process

        configure_process(settings)
        self.options = options
        self.formats = formats
        self.attempts = Path(attempts_dir) if attempts_dir else None
        self.max_retries = max_retries
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.loop = asyncio.new_event_loop()
        self.pipeline = Pipeline(settings, Engine.from_settings(settings.engine))
        self.loop.run_until_complete(self.pipeline.start())

    def __del__(self) -> None:
        # Ray Data deletes the UDF when it retires an actor normally: stop the scheduler task and
        # the decoding processes rather than leave them to die with the process.
        loop = getattr(self, "loop", None)
        if loop is not None and not loop.is_closed():
            try:
                loop.run_until_complete(self.pipeline.stop())
            finally:
                loop.close()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        # With --cpu-decode, the files came decoded (or failed) from the CPU tasks (decode_batch).
        self._decoded = ({p: (a, c, e) for p, a, c, e in zip(batch["path"], batch["audio_f32"], batch["decode_code"],
                                                             batch["decode_error"])}
                         if "audio_f32" in batch else {})
        self._decoder = dict(zip(batch["path"], batch["decoder"])) if "decoder" in batch else {}
        rows = self.loop.run_until_complete(self._batch(list(batch["path"]), list(batch["name"])))
        return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}

    def _attempt_file(self, path: str) -> Path | None:
        if self.attempts is None:
            return None
        return self.attempts / hashlib.sha1(path.encode()).hexdigest()

    def _tried(self, path: str) -> int:
        f = self._attempt_file(path)
        try:
            return int(f.read_text()) if f else 0
        except (OSError, ValueError):
            return 0

    def _set_tried(self, path: str, n: int) -> None:
        f = self._attempt_file(path)
        if f is None:
            return
        if n:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(str(n))
        else:
            f.unlink(missing_ok=True)

    async def _batch(self, paths: list[str], names: list[str]) -> list[dict[str, Any]]:
        tried = {p: self._tried(p) for p in paths}
        if not any(tried.values()):  # the first attempt: all files at once
            for p in paths:
                self._set_tried(p, 1)
            rows = list(await asyncio.gather(*(self._one(p, n) for p, n in zip(paths, names))))
            for p in paths:
                self._set_tried(p, 0)
            return rows
        rows = []  # a retry: a worker died on this batch; one file at a time finds the one that did it
        for p, n in zip(paths, names):
            if tried[p] > self.max_retries:
                row = {"path": p, "ok": False, "error_code": "worker_crashed", "audio_s": 0.0, "result": "",
                       "error": f"The worker died on this file {tried[p]} times (killed, out of memory or a "
                       "crash in a decoder).", "name": n, "processing_s": 0.0, "worker": self.worker, "decoded": "",
                       **{f"out_{fmt}": "" for fmt in self.formats}}
            else:
                self._set_tried(p, tried[p] + 1)
                row = await self._one(p, n)
            self._set_tried(p, 0)  # done (or given up): a later retry of this batch starts it afresh
            rows.append(row)
        return rows

    def _source(self, path: str) -> Any:
        """The path, or the audio a CPU task decoded (its typed error raised here, as the
        pipeline would have raised it)."""
        from asr.pipeline.pipeline import blocks_stream

        audio, code, message = self._decoded.get(path, (b"", "", ""))
        if code:
            raise DecodedError(str(message), str(code))
        if len(audio):
            samples = np.frombuffer(audio, dtype=np.float32).copy()  # writable, as torch.from_numpy wants
            return blocks_stream([samples], len(samples) / 16000)
        return Path(path)

    async def _one(self, path: str, name: str) -> dict[str, Any]:
        from asr.pipeline.formats import render

        t0 = time.perf_counter()
        try:
            result = await self.pipeline.transcribe(self._source(path), self.options, background=True)
            rendered = {f"out_{fmt}": render(result, fmt) for fmt in self.formats}
        except Exception as exc:  # every failure is this file's row; the archive goes on
            row = failure_row(path, exc)
            rendered = {f"out_{fmt}": "" for fmt in self.formats}
        else:
            row = {"path": path, "ok": True, "error_code": "", "error": "", "audio_s": result.duration_s,
                   "result": result.to_json().decode()}
        audio, code, _ = self._decoded.get(path, (b"", "", ""))
        row.update(name=name, processing_s=round(time.perf_counter() - t0, 3), worker=self.worker, **rendered,
                   decoded=str(self._decoder.get(path, "")) if len(audio) or code else self.worker)
        return row


# ---- the driver ------------------------------------------------------------------------------


@dataclass
class Summary:
    files: int = 0
    skipped: int = 0
    transcribed: int = 0
    failed: int = 0
    skipped_failed: int = 0
    """Of `skipped`: failure rows of an earlier run (delete their lines to try them again)."""
    missing: int = 0
    """Files that got no row (never expected: Ray retries a dead worker's batch); a rerun does them."""
    audio_s: float = 0.0
    wall_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def realtime(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s else 0.0

    def line(self) -> str:
        codes = ", ".join(f"{code} {n}" for code, n in sorted(self.failures.items()))
        return (f"{self.files} files: {self.transcribed} transcribed, {self.failed} failed"
                f"{f' ({codes})' if codes else ''}, {self.skipped} already done"
                f"{f' ({self.skipped_failed} of them failures)' if self.skipped_failed else ''}"
                f"{f', {self.missing} got no row (run again)' if self.missing else ''}; "
                f"{self.audio_s / 3600:.3f} h of audio in {self.wall_s:.1f} s = {self.realtime:.1f}x real time")


def actor_settings(settings: Settings, cpus: float) -> Settings:
    """Settings sized to the CPUs Ray gives each actor, where they are left automatic: the
    automatic values count the machine's cores, which every actor on the machine would take at
    once. Torch threads = the actor's CPUs; decoding processes = the CPUs beyond the first (0:
    the pipeline decodes in its threads), so `--cpus-per-actor 8` on a GPU box gives each GPU's
    actor 7 decoding processes."""
    n = max(1, int(cpus))
    engine, pipeline = settings.engine, settings.pipeline
    if not engine.num_threads:
        engine = engine.model_copy(update={"num_threads": n})
    if pipeline.decode_processes < 0:
        pipeline = pipeline.model_copy(update={"decode_processes": n - 1})
    return settings.model_copy(update={"engine": engine, "pipeline": pipeline})


def write_text(target: Path, text: str) -> None:
    """Written whole or not at all (a temporary name, then renamed): a crash leaves no half file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def transcribe_archive(
    source: str,
    output: str | Path,
    settings: Settings,
    options: Options,
    *,
    formats: Iterable[str] = (),
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float = 1.0,
    batch_size: int = 16,
    column: str = "path",
    max_retries: int = 2,
    cpu_decode: bool = False,
    progress: bool = True,
    recognizer: type = Recognizer,
) -> Summary:
    """Run the archive on the Ray cluster this process is connected to (`ray.init` first; a local
    one is started if none is). `recognizer` is the actor class (a subclass in tests)."""
    ray = import_ray()
    from tqdm import tqdm

    def connect() -> None:  # a local Ray starts in seconds: not for a folder that is all done
        if not ray.is_initialized():
            # No dashboard for a Ray of our own: 1.6 of its 6 s start here, and nobody watches it.
            ray.init(logging_level="WARNING", include_dashboard=False)
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # an INFO line per dataset run
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts files, Ray's blocks

    formats = list(formats)
    out_dir = Path(output)
    summary = Summary()
    t0 = time.perf_counter()
    if not Path(source).is_dir():
        connect()  # manifests are read by Ray Data
    paths = list_inputs(ray, source, column)  # before OUTPUT is made: a wrong INPUT leaves nothing
    names = output_names(paths, source)
    log = ResultLog(out_dir / RESULTS)
    try:
        summary.files = len(paths)
        todo = [p for p in paths if p not in log.done]
        summary.skipped = len(paths) - len(todo)
        summary.skipped_failed = sum(1 for p in paths if log.done.get(p) is False)
        if not todo:
            return summary
        connect()
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus_per_actor is None:
            gpus_per_actor = 1.0 if gpus else 0.0
        if actors is None:
            actors = max(1, int(gpus // gpus_per_actor)) if gpus_per_actor else 1
        settings = actor_settings(settings, cpus_per_actor)
        cpu_decode = cpu_decode and options.channels != "split"  # split: the pipeline opens the channels
        if cpu_decode:
            free = ray.cluster_resources().get("CPU", 0) - actors * cpus_per_actor
            if free < 1:
                raise ConfigError(f"--cpu-decode needs a CPU beside the actors' ({actors} x {cpus_per_actor:g} of "
                                  f"{free + actors * cpus_per_actor:g}): decoding tasks would wait for ever")
        bar = tqdm(total=len(todo), unit="file", disable=not progress or None)

        def record(row: dict[str, Any]) -> None:
            if row["path"] in log.done:  # a retried batch delivered it again: written once only
                return
            if row["ok"]:
                for fmt in formats:
                    write_text(out_dir / f"{row['name']}.{fmt}", row[f"out_{fmt}"])
            log.append(output_row(row))  # the line is the commit: after the subtitle files
            if row["ok"]:
                summary.transcribed += 1
                summary.audio_s += float(row["audio_s"])
            else:
                summary.failed += 1
                summary.failures[row["error_code"]] = summary.failures.get(row["error_code"], 0) + 1
                tqdm.write(f"FAILED {row['path']}: {row['error_code']}: {row['error']}", file=sys.stderr)
            bar.update(1)

        attempts_dir = out_dir / ".attempts"  # the Recognizer's attempt counts (local machine's)
        shutil.rmtree(attempts_dir, ignore_errors=True)
        # Blocks of about one batch each, made here in the driver: no Ray task runs before the
        # actors, so actors that take every CPU of the cluster cannot starve it (a repartition
        # step here waited for ever for a CPU held by the actor).
        ds = ray.data.from_items([{"path": p, "name": names[p]} for p in todo],
                                 override_num_blocks=max(1, -(-len(todo) // batch_size)))
        if cpu_decode:
            ds = ds.map_batches(decode_batch, batch_size=batch_size, batch_format="numpy", num_cpus=1,
                                fn_kwargs={"max_mb": settings.pipeline.decode_process_max_mb,
                                           "max_audio_s": settings.limits.max_audio_s},
                                # Ray Data fuses a task stage into the actor stage after it when their
                                # resources match (CPU actors): decoding would run in the actor again.
                                # A ray_remote_args_fn is never fused.
                                ray_remote_args_fn=_no_extra_args)
        results = ds.map_batches(
            recognizer,
            fn_constructor_kwargs={"settings": settings, "options": options, "formats": formats,
                                   "attempts_dir": str(attempts_dir.resolve()), "max_retries": max_retries},
            compute=ray.data.ActorPoolStrategy(size=actors),
            batch_size=batch_size,
            batch_format="numpy",
            num_gpus=gpus_per_actor,
            num_cpus=cpus_per_actor,
            # Ray Data's defaults, which the archive relies on (not passed: passing them is
            # deprecated): an actor whose worker died is restarted (max_restarts=-1) and its batch
            # retried (max_task_retries=-1); the Recognizer bounds the retries per file.
        )
        try:
            for row in results.iter_rows():
                record(dict(row))
        finally:
            bar.close()
            shutil.rmtree(attempts_dir, ignore_errors=True)
        summary.missing = sum(1 for p in todo if p not in log.done)
    finally:
        log.close()
        summary.wall_s = time.perf_counter() - t0
    return summary


def write_parquet(out_dir: Path) -> Path:
    """results.jsonl as results.parquet (the Result as a JSON string column), rewritten whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (out_dir / RESULTS).read_text(encoding="utf-8").splitlines() if line]
    for row in rows:
        row["result"] = json.dumps(row["result"], ensure_ascii=False) if row["result"] is not None else None
    target = out_dir / "results.parquet"
    pq.write_table(pa.Table.from_pylist(rows), target)
    return target


def iter_rows(out_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of a finished (or partial) archive run."""
    for line in (Path(out_dir) / RESULTS).read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield json.loads(line)


# ---- the command -----------------------------------------------------------------------------


def cmd_transcribe_archive(args: argparse.Namespace) -> int:
    from asr.cli import build_options, build_settings

    try:
        ray = import_ray()
    except MissingRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "://" not in args.input and not Path(args.input).exists():
        print(f"error: no such file or folder: {args.input}", file=sys.stderr)
        return 2
    settings = build_settings(args)
    options = build_options(args, settings)
    if args.address:
        try:
            ray.init(address=args.address, logging_level="WARNING")
        except (ConnectionError, RuntimeError) as exc:  # no cluster there, or its token is missing
            print(f"error: cannot join the Ray cluster at {args.address}: {exc}", file=sys.stderr)
            return 2
    try:
        summary = transcribe_archive(
            args.input, args.output, settings, options, formats=args.format, actors=args.actors,
            gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size,
            column=args.column, max_retries=args.max_retries, cpu_decode=args.cpu_decode,
            progress=not args.quiet,
        )
    except ray.exceptions.RayError as exc:
        # Per-file errors are rows; what reaches here stopped the run, most often a recognizer that
        # could not start (a model path missing on a worker): its own error is in Ray's text.
        found = re.findall(r"asr\.errors\.\w+: (.*)", str(exc))
        print(f"error: {found[-1] if found else str(exc).splitlines()[0]} (rows written so far are kept; "
              "a rerun resumes)", file=sys.stderr)
        return 2
    if args.parquet:
        write_parquet(Path(args.output))
    print(summary.line(), file=sys.stderr)
    return 1 if summary.failed or summary.missing else 0


def add_parser(sub: Any) -> None:
    from asr.cli import add_recognition_arguments
    from asr.pipeline.formats import FORMATS

    p = sub.add_parser("transcribe-archive", help="transcribe an archive on Ray Data (one box or a cluster)",
                       description="Rows in OUTPUT/results.jsonl (one per file: the Result JSON, or the error); "
                       "a rerun skips the files already there. Needs: pip install \"ray[data]\"")
    p.add_argument("input", help="a folder, or a .txt/.lst (one path a line), .csv or .parquet manifest")
    p.add_argument("output", help="folder for results.jsonl and the subtitle files")
    p.add_argument("--column", default="path", help="the manifest's column of paths (CSV/Parquet)")
    p.add_argument("--format", nargs="*", choices=FORMATS, default=[], help="also write these files per recording")
    p.add_argument("--parquet", action="store_true", help="also write results.parquet at the end")
    p.add_argument("--address", help="the Ray cluster to join (ray.init(address=...)); default: a local one")
    p.add_argument("--actors", type=int, help="recognizer actors (default: one per GPU, else 1)")
    p.add_argument("--gpus-per-actor", type=float, help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16, help="files per actor call (transcribed concurrently)")
    p.add_argument("--max-retries", type=int, default=2,
                   help="a file whose worker died more than this many times (killed, out of memory) "
                   "becomes a failure row (worker_crashed) instead of being retried again")
    p.add_argument("--cpu-decode", action="store_true",
                   help="decode files up to pipeline.decode_process_max_mb in Ray tasks on the CPUs beside the "
                   "actors (larger ones stream in the actors); needs a CPU no actor holds")
    add_recognition_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_transcribe_archive)
