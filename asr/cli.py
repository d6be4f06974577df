"""Command line: `python -m asr transcribe FILE_OR_DIR...`, `make-model`, `bench`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import ASRError

AUDIO_SUFFIXES = {".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".webm", ".mp4",
                  ".wma", ".amr", ".aiff", ".aif", ".mka"}
# Files per engine call: large enough for full batches, small enough for a lively progress bar.
_CHUNK = 64


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


def _decoded(files: list[Path], max_audio_s: float) -> Iterator[tuple[Path, np.ndarray | ASRError]]:
    """Decode on worker threads (codecs release the GIL) while the engine runs."""
    from .audio import decode_audio

    def load(path: Path) -> np.ndarray | ASRError:
        try:
            return decode_audio(path, max_duration_s=max_audio_s)
        except ASRError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=4) as pool:
        yield from zip(files, pool.map(load, files))


def _output_name(path: Path, roots: list[Path]) -> str:
    for root in roots:
        if root.is_dir() and path.is_relative_to(root):
            return str(path.relative_to(root).with_suffix(""))
    return path.stem


def cmd_transcribe(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .engine import Engine
    from .formats import render
    from .hotwords import parse_hotwords
    from .settings import load_settings

    overrides: dict = {"engine": {"warmup": False}}
    for key in ("model", "device", "dtype", "attention"):
        if getattr(args, key):
            overrides["engine"][key] = getattr(args, key)
    settings = load_settings(args.config, **overrides)
    hotword_text = args.hotwords
    if args.hotword_file:
        hotword_text = (hotword_text or "") + "\n" + Path(args.hotword_file).read_text(encoding="utf-8")
    hotwords = parse_hotwords(
        hotword_text, max_count=settings.limits.max_hotwords, max_chars=settings.limits.max_hotword_chars
    )
    files = find_audio_files(args.inputs)
    if not files:
        print("no audio files found", file=sys.stderr)
        return 2
    engine = Engine.from_settings(settings.engine)
    out_dir = Path(args.output_dir)
    roots = [Path(p) for p in args.inputs]
    failed: list[tuple[Path, str]] = []
    done = 0
    bar = tqdm(total=len(files), unit="file", disable=args.quiet or None)
    decoded = _decoded(files, settings.limits.max_audio_s)
    while True:
        chunk = [item for _, item in zip(range(_CHUNK), decoded)]
        if not chunk:
            break
        good = [(p, a) for p, a in chunk if isinstance(a, np.ndarray)]
        for path, err in ((p, a) for p, a in chunk if not isinstance(a, np.ndarray)):
            failed.append((path, str(err)))
            tqdm.write(f"FAILED {path}: {err}", file=sys.stderr)
        results = engine.transcribe([a for _, a in good], hotwords=hotwords) if good else []
        for (path, _), result in zip(good, results):
            name = _output_name(path, roots)
            for fmt in args.format:
                target = out_dir / f"{name}.{fmt}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(render(result, fmt, source=str(path)), encoding="utf-8")
            done += 1
        bar.update(len(chunk))
    bar.close()
    print(f"{done} transcribed, {len(failed)} failed; outputs in {out_dir}", file=sys.stderr)
    return 1 if failed else 0


def cmd_make_model(args: argparse.Namespace) -> int:
    from .testmodel import make_model_dir

    path = make_model_dir(args.output, args.size, seed=args.seed)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .formats import FORMATS

    parser = argparse.ArgumentParser(prog="python -m asr", description="SeACo-Paraformer speech recognition")
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("transcribe", help="transcribe audio files or folders")
    tr.add_argument("inputs", nargs="+", help="audio files and/or folders (searched recursively)")
    tr.add_argument("--hotwords", help="hotwords, separated by spaces, commas or new lines")
    tr.add_argument("--hotword-file", help="a text file of hotwords, one per line")
    tr.add_argument("--format", nargs="+", choices=FORMATS, default=["txt"], help="output formats")
    tr.add_argument("--output-dir", default="transcripts")
    tr.add_argument("--model", help="model directory or ModelScope id")
    tr.add_argument("--config", help="settings YAML (configs/*.yaml)")
    tr.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    tr.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"])
    tr.add_argument("--attention", choices=["auto", "flash-attn", "varlen", "sdpa", "eager"])
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_transcribe)

    mk = sub.add_parser("make-model", help="write a model directory with seeded random weights (tests, benchmarks)")
    mk.add_argument("output")
    mk.add_argument("--size", choices=["tiny", "full"], default="tiny")
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=cmd_make_model)

    try:
        from .bench import add_parser as add_bench
    except ImportError:
        pass
    else:
        add_bench(sub)
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
