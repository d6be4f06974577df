"""Command line: `python -m asr transcribe FILE_OR_DIR...`, `make-model`, `bench`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from asr.errors import ASRError
from asr.pipeline.audio import SAMPLE_RATE

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
    from asr.pipeline.audio import decode_audio

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

    from asr.engine.core import Engine
    from asr.pipeline.formats import render
    from asr.pipeline.hotwords import parse_hotwords
    from asr.pipeline.longform import LongformModels, LongRequest, from_transcripts, transcribe_files_long
    from asr.settings import load_settings

    overrides: dict = {"engine": {"warmup": False}, "longform": {}}
    for key in ("model", "device", "dtype", "attention"):
        if getattr(args, key):
            overrides["engine"][key] = getattr(args, key)
    for key, name in (("vad", "vad_backend"), ("vad_model", "vad_model"), ("punc_model", "punc_model"),
                      ("speaker_model", "speaker_model")):
        if getattr(args, name):
            overrides["longform"][key] = getattr(args, name)
    missing = [name for name in args.inputs if not Path(name).exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    settings = load_settings(args.config, **overrides)
    request = LongRequest(
        vad=args.vad, punc=args.punc, speakers=args.speakers is not None,
        n_speakers=args.speakers or None,
    )
    models = LongformModels(settings.longform, settings.engine.model_cache)
    hotword_text = args.hotwords
    if args.hotword_file:
        try:
            hotword_text = (hotword_text or "") + "\n" + Path(args.hotword_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: cannot read the hotword file {args.hotword_file}: {exc}", file=sys.stderr)
            return 2
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
    warned_punc = False
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
        long_items = [(p, a) for p, a in good if models.use_vad(len(a) / SAMPLE_RATE, request)]
        short_items = [(p, a) for p, a in good if not models.use_vad(len(a) / SAMPLE_RATE, request)]
        outputs: list[tuple[Path, object]] = []
        if short_items:
            results = engine.transcribe([a for _, a in short_items], hotwords=hotwords)
            # Short files are punctuated only when asked (--punc): the default keeps them
            # exactly what the engine heard, one clip each.
            punc = models.punctuator() if args.punc else None
            if args.punc and punc is None:
                tqdm.write(f"punctuation unavailable: {models.punctuation_unavailable()}", file=sys.stderr)
            if punc is not None:
                results = from_transcripts(results, [len(a) / SAMPLE_RATE for _, a in short_items], punc)
            outputs += [(p, r) for (p, _), r in zip(short_items, results)]
        if long_items:
            punc = models.punctuator() if args.punc is not False else None
            if args.punc is not False and punc is None and not warned_punc:
                warned_punc = True
                tqdm.write(f"punctuation unavailable: {models.punctuation_unavailable()}", file=sys.stderr)
            embedder = models.embedder() if request.speakers else None
            # All segments of all long files in this chunk share the engine's batches.
            longs = transcribe_files_long(
                engine.transcribe, [a for _, a in long_items], models.vad(), punc, hotwords,
                models.options(request), embedder=embedder,
            )
            outputs += [(p, r) for (p, _), r in zip(long_items, longs)]
        for path, result in outputs:
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
    from asr.devtools.testmodel import make_model_dir

    path = make_model_dir(args.output, args.size, seed=args.seed)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from asr.pipeline.formats import FORMATS

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
    tr.add_argument("--vad", action=argparse.BooleanOptionalAction, default=None,
                    help="cut recordings into speech segments (sentence timestamps, any length); "
                    "default: on for files longer than longform.auto_vad_s (45 s)")
    tr.add_argument("--punc", action=argparse.BooleanOptionalAction, default=None,
                    help="add punctuation (CT-Transformer); default: on the VAD path when the "
                    "model is available")
    tr.add_argument("--speakers", nargs="?", type=int, const=0, default=None, metavar="N",
                    help="label sentences with speakers (CAM++); N = number of speakers, "
                    "omitted = estimate")
    tr.add_argument("--vad-backend", choices=["silero", "fsmn"], help="VAD model (default silero)")
    tr.add_argument("--vad-model", help="FSMN-VAD model directory or ModelScope id")
    tr.add_argument("--punc-model", help="punctuation model directory or ModelScope id")
    tr.add_argument("--speaker-model", help="CAM++ model directory or ModelScope id")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_transcribe)

    mk = sub.add_parser("make-model", help="write a model directory with seeded random weights (tests, benchmarks)")
    mk.add_argument("output")
    mk.add_argument("--size", choices=["tiny", "full"], default="tiny")
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=cmd_make_model)

    from asr.devtools.bench import add_parser as add_bench
    from asr.devtools.bench_long import add_parser as add_bench_long

    add_bench(sub)
    add_bench_long(sub)
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
