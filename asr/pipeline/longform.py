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

from asr.errors import ASRError
from asr.pipeline.punc import SENTENCE_END, PuncOptions, Punctuator
from asr.pipeline.speakers import (
    SpeakerEmbedder,
    SpeakerOptions,
    SpeakerWindow,
    cluster_speakers,
    majority_speaker,
    speaker_name,
    windows,
)
from asr.pipeline.subtitles import (
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
from asr.pipeline.vad import SAMPLE_RATE, Segment, SpeechChunk, VadBackend, VadOptions


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
    # Speaker labels per sentence; None leaves speakers off (they need a speaker model).
    speakers: SpeakerOptions | None = None
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
    punctuated: bool = False
    speakers: list[str] = field(default_factory=list)  # labels in order of first appearance

    @property
    def words(self) -> list[TimedWord]:
        return [w for r in self.segments for w in r.words]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: text, sentences (ms on the file's timeline, speaker), VAD segments and
        per-word times (`tokens`/`timestamps`, the same keys as a short transcript)."""
        words = self.words
        return {
            "text": self.text,
            "duration_s": round(self.duration_s, 3),
            "speech_s": round(self.speech_s, 3),
            "punctuated": self.punctuated,
            "speakers": list(self.speakers),
            "sentences": [
                {"text": s.text, "start_ms": s.start_ms, "end_ms": s.end_ms, "speaker": s.speaker}
                for s in self.sentences
            ],
            "vad_segments": [[r.segment.start_ms, r.segment.end_ms] for r in self.segments],
            "tokens": [w.text for w in words],
            "timestamps": [[w.start_ms, w.end_ms] for w in words],
        }

    def srt(self, speakers: bool = False) -> str:
        return to_srt(self.sentences, speakers=speakers, until_ms=round(self.duration_s * 1000))

    def vtt(self, speakers: bool = False) -> str:
        return to_vtt(self.sentences, speakers=speakers, until_ms=round(self.duration_s * 1000))


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
    embedder: SpeakerEmbedder | None = None,
) -> list[LongTranscript]:
    """Transcribe several long recordings, their segments sharing engine batches.

    `inputs` are float32 mono 16 kHz arrays or iterables of such blocks (read lazily).
    `hotwords` is one list for every file or one list (or None) per file.
    With `opts.speakers` set, `embedder` (CAM++) labels every sentence with a speaker.
    """
    opts = opts or LongformOptions()
    if opts.speakers is not None and embedder is None:
        raise ValueError("Speaker labels need a speaker model (embedder).")
    spk_spans: list[list[SpeakerWindow]] = [[] for _ in inputs]
    spk_emb: list[list[np.ndarray]] = [[] for _ in inputs]
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
        if opts.speakers is not None and embedder is not None:
            # Embeddings are small (a few hundred floats per 0.75 s); the audio is not kept.
            owners, clips = [], []
            for i, chunk in group:
                spans, cs = windows(chunk.audio, chunk.segment.start_sample, opts.speakers)
                spk_spans[i] += spans
                owners += [i] * len(cs)
                clips += cs
            emb = embedder.embed(clips)
            for i, row in zip(owners, emb):
                spk_emb[i].append(row)
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
        word_lists = punctuate_words(punc, word_lists, opts.punc)
    out = []
    for i, rs in enumerate(results):
        sentences = build_sentences(word_lists[i], opts.subtitles)
        names: list[str] = []
        if opts.speakers is not None and spk_emb[i]:
            sentences, names = _label_speakers(sentences, spk_spans[i], np.stack(spk_emb[i]),
                                               opts.speakers)
        out.append(
            LongTranscript(
                sentences=sentences,
                segments=rs,
                text=to_text(sentences).strip(),
                duration_s=durations[i],
                speech_s=sum(r.segment.duration_s for r in rs),
                punctuated=punc is not None,
                speakers=names,
            )
        )
        if progress:
            progress(i, durations[i])
    return out


def punctuate_words(
    punc: Punctuator, word_lists: Sequence[Sequence[TimedWord]], opts: PuncOptions | None = None
) -> list[list[TimedWord]]:
    """Words with the punctuation model's marks, all lists in one batched pass; each list ends
    with a sentence mark."""
    marks = punc.predict([[w.text for w in ws] for ws in word_lists], opts)
    out = []
    for ws, ms in zip(word_lists, marks):
        marked = [dataclasses.replace(w, punc=m) for w, m in zip(ws, ms)]
        if marked and marked[-1].punc not in SENTENCE_END:
            end = "." if marked[-1].text.isascii() else "。"
            marked[-1] = dataclasses.replace(marked[-1], punc=end)
        out.append(marked)
    return out


def from_transcripts(
    transcripts: Sequence[TranscriptLike],
    durations_s: Sequence[float],
    punc: Punctuator | None = None,
    opts: LongformOptions | None = None,
) -> list[LongTranscript]:
    """Short recordings (one engine clip each, no VAD) as sentences, punctuated in one pass."""
    opts = opts or LongformOptions()
    segs = [Segment(0, round(d * SAMPLE_RATE)) for d in durations_s]
    word_lists = [_segment_words(seg, t) for seg, t in zip(segs, transcripts)]
    if punc is not None:
        word_lists = punctuate_words(punc, word_lists, opts.punc)
    out = []
    for seg, words, d in zip(segs, word_lists, durations_s):
        sentences = build_sentences(words, opts.subtitles)
        out.append(LongTranscript(
            sentences=sentences,
            segments=[SegmentResult(seg, join_words(words), words)],
            text=to_text(sentences).strip(),
            duration_s=d,
            speech_s=d,
            punctuated=punc is not None,
        ))
    return out


def _label_speakers(
    sentences: list[Sentence], spans: list[SpeakerWindow], emb: np.ndarray, opts: SpeakerOptions
) -> tuple[list[Sentence], list[str]]:
    """Each sentence takes the speaker owning most of its time (as funasr's distribute_spk)."""
    labels = cluster_speakers(emb, opts).tolist()
    labelled = []
    for s in sentences:
        label = majority_speaker(s.start_ms, s.end_ms, spans, labels)
        labelled.append(dataclasses.replace(s, speaker=None if label is None else speaker_name(label)))
    names = list(dict.fromkeys(s.speaker for s in labelled if s.speaker))
    return labelled, names


def transcribe_long(
    engine_transcribe: EngineTranscribe,
    audio_or_chunks: np.ndarray | Iterable[np.ndarray],
    vad: VadBackend,
    punc: Punctuator | None = None,
    hotwords: Sequence[str] | None = None,
    opts: LongformOptions | None = None,
    progress: Progress | None = None,
    embedder: SpeakerEmbedder | None = None,
) -> LongTranscript:
    """Transcribe one long recording (an array or an iterable of blocks) into sentences."""
    return transcribe_files_long(
        engine_transcribe, [audio_or_chunks], vad, punc, hotwords, opts, progress, embedder
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


@dataclass(frozen=True)
class LongRequest:
    """What one request asks of the long-recording features."""

    vad: bool | None = None
    """True: always segment with VAD; False: one engine clip; None: VAD for audio longer than
    `LongformSettings.auto_vad_s` (and whenever speakers are asked for)."""
    punc: bool | None = None
    """True/None: punctuate when a punctuation model is available; False: never."""
    speakers: bool = False
    n_speakers: int | None = None
    """With speakers on: the exact number of speakers, or None to estimate it."""


class LongformModels:
    """The VAD, punctuation and speaker models, loaded once on first use and shared by every
    request (all thread-safe). The recogniser itself is not here: long recordings go through the
    same engine (and, in the service, the same batching scheduler) as everything else.

    A punctuation model that cannot be loaded is reported, not raised: results then carry
    `punctuated: false` and `punctuation_unavailable()` says why.
    """

    def __init__(self, settings: Any, cache_dir: Any) -> None:
        import threading
        from pathlib import Path

        self.settings = settings  # asr.settings.LongformSettings
        self.cache_dir = Path(cache_dir)
        self._lock = threading.Lock()
        self._vad: VadBackend | None = None
        self._punc: Punctuator | None = None
        self._punc_error: str | None = None if settings.punc_model else "no punctuation model is configured"
        self._embedder: SpeakerEmbedder | None = None

    def _resolve(self, model: str, required: tuple[str, ...], setting: str, flag: str) -> Any:
        from asr.engine.model import resolve_model_dir

        env = "ASR_LONGFORM__" + setting.upper()
        how = f"set longform.{setting} to DIR ({env}=DIR; the command line's {flag} DIR)"
        return resolve_model_dir(model, self.cache_dir, required, how_to_set=how)

    def vad(self) -> VadBackend:
        """The configured VAD backend (raises ModelLoadError when it cannot be loaded)."""
        from asr.pipeline.vad import load_vad

        with self._lock:
            if self._vad is None:
                if self.settings.vad == "fsmn":
                    path = self._resolve(self.settings.vad_model, ("config.yaml", "model.pt", "am.mvn"),
                                         "vad_model", "--vad-model")
                    self._vad = load_vad("fsmn", path)
                else:
                    self._vad = load_vad("silero")
            return self._vad

    def punctuator(self) -> Punctuator | None:
        """The punctuation model, or None when it is not configured or cannot be loaded."""
        import logging

        with self._lock:
            if self._punc is None and self._punc_error is None:
                try:
                    path = self._resolve(self.settings.punc_model, ("config.yaml", "model.pt", "tokens.json"),
                                         "punc_model", "--punc-model")
                    self._punc = Punctuator(path, device=self.settings.punc_device)
                except ASRError as exc:
                    self._punc_error = str(exc)
                    logging.getLogger(__name__).warning("punctuation unavailable: %s", exc)
            return self._punc

    def punctuation_unavailable(self) -> str | None:
        """Why punctuation is off for everyone (None when the model is loaded or not tried yet)."""
        return self._punc_error

    def embedder(self) -> SpeakerEmbedder:
        """The CAM++ speaker model (raises ModelLoadError when it cannot be loaded)."""
        with self._lock:
            if self._embedder is None:
                path = self._resolve(self.settings.speaker_model, ("config.yaml",), "speaker_model", "--speaker-model")
                self._embedder = SpeakerEmbedder(path, device=self.settings.speaker_device)
            return self._embedder

    def use_vad(self, duration_s: float | None, request: LongRequest) -> bool:
        """Whether a recording of this length takes the VAD path (None: length unknown yet)."""
        if request.speakers:
            return True
        if request.vad is not None:
            return request.vad
        return duration_s is None or duration_s > self.settings.auto_vad_s

    def options(self, request: LongRequest, base: LongformOptions | None = None) -> LongformOptions:
        """Long-path options for one request, from the settings and the request's choices."""
        base = base or LongformOptions()
        vad = dataclasses.replace(base.vad, max_segment_s=self.settings.max_segment_s,
                                  min_segment_s=min(base.vad.min_segment_s, self.settings.max_segment_s))
        speakers = None
        if request.speakers:
            speakers = SpeakerOptions(
                n_speakers=request.n_speakers,
                max_speakers=max(self.settings.max_speakers, request.n_speakers or 1),
                threshold=self.settings.speaker_threshold,
            )
        return dataclasses.replace(base, vad=vad, group_s=self.settings.group_s, speakers=speakers)
