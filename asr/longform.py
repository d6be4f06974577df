"""Long recordings (minutes to hours): VAD segments -> engine batches -> timeline -> sentences.

Segments of all files in a job go to the engine together, in groups of about `group_s` seconds of
audio, so the engine's length-sorted batches stay full while memory holds one group, not the job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from asr.punc import SENTENCE_END, PuncOptions, Punctuator
from asr.subtitles import (
    Sentence,
    SubtitleOptions,
    TimedWord,
    build_sentences,
    join_words,
    to_srt,
    to_text,
    to_vtt,
    words_from_tokens,
)
from asr.vad import SAMPLE_RATE, Segment, SpeechChunk, VadBackend, VadOptions


class TranscriptLike(Protocol):
    """What longform needs from the engine's `Transcript`."""

    text: str
    tokens: list[str]
    timestamps: list[tuple[int, int]]


# engine.transcribe: audios, then one hotword list for all or one list per audio.
EngineTranscribe = Callable[[list[np.ndarray], Any], Sequence[TranscriptLike]]
Progress = Callable[[int, float], None]  # (file index, seconds of that file's audio done)


@dataclass(frozen=True)
class LongformOptions:
    """Options of a long-recording job; change per request with `dataclasses.replace`."""

    vad: VadOptions = field(default_factory=VadOptions)
    subtitles: SubtitleOptions = field(default_factory=SubtitleOptions)
    punc: PuncOptions = field(default_factory=PuncOptions)
    # Seconds of segment audio handed to the engine per call (it batches inside the call).
    group_s: float = 600.0


@dataclass(frozen=True)
class SegmentResult:
    """One VAD segment and what the engine heard in it, on the file's timeline."""

    segment: Segment
    text: str
    words: list[TimedWord]


@dataclass(frozen=True)
class LongTranscript:
    """The result for one recording."""

    sentences: list[Sentence]
    segments: list[SegmentResult]
    text: str
    duration_s: float
    speech_s: float

    def srt(self, speakers: bool = False) -> str:
        return to_srt(self.sentences, speakers=speakers)

    def vtt(self, speakers: bool = False) -> str:
        return to_vtt(self.sentences, speakers=speakers)


def _blocks(audio_or_chunks: np.ndarray | Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    if isinstance(audio_or_chunks, np.ndarray):
        step = SAMPLE_RATE * 60
        return (audio_or_chunks[i : i + step] for i in range(0, len(audio_or_chunks), step))
    return audio_or_chunks


def _per_file_hotwords(
    hotwords: Sequence[str] | Sequence[Sequence[str] | None] | None, n_files: int
) -> tuple[list[str] | None, list[list[str] | None] | None]:
    """(shared list, per-file lists): exactly one is used."""
    if not hotwords:
        return None, None
    if all(isinstance(h, str) for h in hotwords):
        return list(hotwords), None  # type: ignore[arg-type]
    if len(hotwords) != n_files:
        raise ValueError("Give one hotword list per file, or one list for all files.")
    lists = [list(h) if h else None for h in hotwords]  # type: ignore[union-attr]
    if all(h == lists[0] for h in lists):
        return lists[0], None
    return None, lists


def _segment_words(seg: Segment, result: TranscriptLike) -> list[TimedWord]:
    offset = seg.start_ms
    tokens = list(result.tokens or [])
    stamps = list(result.timestamps or [])
    if tokens and len(stamps) == len(tokens):
        words = words_from_tokens(tokens, stamps, offset)
        # Timestamps past the clip end (CIF rounding) are pulled back inside the segment.
        return [
            dataclasses.replace(w, start_ms=min(w.start_ms, seg.end_ms),
                                end_ms=min(max(w.end_ms, w.start_ms), seg.end_ms))
            for w in words
        ]
    if result.text.strip():
        # No token times: the text spans the whole segment.
        return [TimedWord(result.text.strip(), seg.start_ms, seg.end_ms)]
    return []


def transcribe_files_long(
    engine_transcribe: EngineTranscribe,
    inputs: Sequence[np.ndarray | Iterable[np.ndarray]],
    vad: VadBackend,
    punc: Punctuator | None = None,
    hotwords: Sequence[str] | Sequence[Sequence[str] | None] | None = None,
    opts: LongformOptions | None = None,
    progress: Progress | None = None,
) -> list[LongTranscript]:
    """Transcribe several long recordings, their segments sharing engine batches.

    `inputs` are float32 mono 16 kHz arrays or iterables of such blocks (read lazily).
    `hotwords` is one list for every file or one list (or None) per file.
    """
    opts = opts or LongformOptions()
    shared_hw, file_hw = _per_file_hotwords(hotwords, len(inputs))
    results: list[list[SegmentResult]] = [[] for _ in inputs]
    durations = [0.0] * len(inputs)
    group: list[tuple[int, SpeechChunk]] = []
    group_samples = 0
    budget = int(opts.group_s * SAMPLE_RATE)

    def run_group() -> None:
        nonlocal group, group_samples
        if not group:
            return
        audios = [c.audio for _, c in group]
        if file_hw is not None:
            outs = engine_transcribe(audios, [file_hw[i] or [] for i, _ in group])
        else:
            outs = engine_transcribe(audios, shared_hw)
        if len(outs) != len(group):
            raise RuntimeError("The engine returned a different number of results than clips.")
        for (i, chunk), out in zip(group, outs):
            words = _segment_words(chunk.segment, out)
            text = join_words(words)
            results[i].append(SegmentResult(chunk.segment, text, words))
        group, group_samples = [], 0

    for i, source in enumerate(inputs):
        counted = _Counted(_blocks(source))
        for chunk in vad.stream(counted, opts.vad):
            group.append((i, chunk))
            group_samples += len(chunk.audio)
            if group_samples >= budget:
                run_group()
                if progress:
                    progress(i, chunk.segment.end_sample / SAMPLE_RATE)
        durations[i] = counted.samples / SAMPLE_RATE
    run_group()

    word_lists = [[w for r in rs for w in r.words] for rs in results]
    if punc is not None:
        marks = punc.predict([[w.text for w in ws] for ws in word_lists], opts.punc)
        for n, (ws, ms) in enumerate(zip(word_lists, marks)):
            ws = [dataclasses.replace(w, punc=m) for w, m in zip(ws, ms)]
            if ws and ws[-1].punc not in SENTENCE_END:
                ws[-1] = dataclasses.replace(ws[-1], punc="." if ws[-1].text.isascii() else "。")
            word_lists[n] = ws
    out = []
    for i, rs in enumerate(results):
        sentences = build_sentences(word_lists[i], opts.subtitles)
        out.append(
            LongTranscript(
                sentences=sentences,
                segments=rs,
                text=to_text(sentences).strip(),
                duration_s=durations[i],
                speech_s=sum(r.segment.duration_s for r in rs),
            )
        )
        if progress:
            progress(i, durations[i])
    return out


def transcribe_long(
    engine_transcribe: EngineTranscribe,
    audio_or_chunks: np.ndarray | Iterable[np.ndarray],
    vad: VadBackend,
    punc: Punctuator | None = None,
    hotwords: Sequence[str] | None = None,
    opts: LongformOptions | None = None,
    progress: Progress | None = None,
) -> LongTranscript:
    """Transcribe one long recording (an array or an iterable of blocks) into sentences."""
    return transcribe_files_long(
        engine_transcribe, [audio_or_chunks], vad, punc, hotwords, opts, progress
    )[0]


class _Counted:
    """Pass blocks through while counting samples (the file's duration for streamed input)."""

    def __init__(self, blocks: Iterable[np.ndarray]) -> None:
        self._blocks = blocks
        self.samples = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        for block in self._blocks:
            self.samples += len(block)
            yield block
