"""Cut long recordings into speech segments that the recogniser handles well.

Two voice-activity backends sit behind one interface (`VadBackend`): Silero VAD, whose trained
weights ship inside the `silero-vad` wheel, and FunASR's FSMN-VAD (`FsmnVADStreaming`) loaded from a
model directory in funasr's format. Both only find raw speech regions; the shared `_Segmenter` then
pads, merges and cuts those regions into segments:

* a region longer than `max_segment_s` is cut at the quietest point below the cap, so a word is
  never split when there is a pause to cut at;
* neighbouring regions separated by a pause inside a sentence (`merge_gap_s`) are merged while
  the result stays under the cap; sentences stay apart by default, since a recogniser trained on
  utterances recognises them better one at a time (`min_segment_s` merges short ones anyway).

Everything works on a stream of audio blocks: memory is bounded by the segment budget (one
segment plus one VAD block), not by the length of the file.
"""

from __future__ import annotations

import collections
import importlib.util
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from asr.errors import AudioError, ModelLoadError, VadOptionsError

SAMPLE_RATE = 16000



@dataclass(frozen=True)
class VadOptions:
    """How speech is found and cut into segments. Change per request with `dataclasses.replace`."""

    # Paraformer-large was trained on utterances of mostly under 15 s. FunASR's own VAD allows
    # 60 s segments, but the CIF timestamps drift and attention cost grows quadratically with
    # length, and a batch is padded to its longest member: 20 s keeps accuracy and batches tight.
    max_segment_s: float = 20.0
    # A segment shorter than this is merged with the next one across any pause, as long as the
    # merged segment stays under `max_segment_s` (off: sentences recognised apart come out better
    # than run together; `LongformSettings.min_segment_s` has the figures).
    min_segment_s: float = 0.0
    # Neighbouring regions whose pause is at most this long are merged (under the cap): pauses
    # inside a sentence.
    merge_gap_s: float = 0.5
    # Audio kept on each side of a speech region, so soft word onsets and endings are not clipped.
    speech_pad_ms: int = 200
    # A pause at least this long ends a speech region.
    min_silence_ms: int = 300
    # Speech regions shorter than this are treated as noise (clicks, coughs).
    min_speech_ms: int = 250
    # Silero: a frame is speech above `threshold`; speech continues until it drops below
    # `threshold - 0.15` (hysteresis, as in Silero's own `get_speech_timestamps`).
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.max_segment_s < 1.0:
            raise VadOptionsError("max_segment_s must be at least 1 second.")
        if not 0.0 <= self.min_segment_s <= self.max_segment_s:
            raise VadOptionsError("min_segment_s must lie between 0 and max_segment_s.")
        if self.merge_gap_s < 0 or self.speech_pad_ms < 0 or self.min_speech_ms < 0:
            raise VadOptionsError("merge_gap_s, speech_pad_ms and min_speech_ms cannot be negative.")
        if self.min_silence_ms < 32:
            raise VadOptionsError("min_silence_ms must be at least 32 ms (one VAD frame).")
        if 2 * self.speech_pad_ms >= self.max_segment_s * 1000:
            raise VadOptionsError("speech_pad_ms is too large for max_segment_s.")
        if not 0.2 <= self.threshold < 1.0:
            raise VadOptionsError("threshold must lie in [0.2, 1).")


@dataclass(frozen=True)
class Segment:
    """A span of the input, in samples at 16 kHz, end exclusive."""

    start_sample: int
    end_sample: int

    @property
    def start_ms(self) -> int:
        return self.start_sample * 1000 // SAMPLE_RATE

    @property
    def end_ms(self) -> int:
        return self.end_sample * 1000 // SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return (self.end_sample - self.start_sample) / SAMPLE_RATE


@dataclass(frozen=True)
class SpeechChunk:
    """A segment together with its audio, as yielded by the streaming form."""

    segment: Segment
    audio: np.ndarray = field(repr=False)


class RegionStream(Protocol):
    """A backend's per-stream state: turns audio blocks into raw speech regions (in samples)."""

    def push(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """Feed the next block; return the speech regions that closed, in order."""

    def finish(self) -> list[tuple[int, int]]:
        """End of input; return the regions still open or unreported."""

    @property
    def open_start(self) -> int | None:
        """Start sample of a speech region that began but has not ended yet, else None."""

    @property
    def frontier(self) -> int:
        """Every region starting before this sample has been reported (closed or open)."""


class VadBackend(Protocol):
    """A voice-activity detector; `segment` and `stream` come from `_Segmenter`."""

    name: str

    def open_stream(self, opts: VadOptions) -> RegionStream: ...

    def segment(self, audio: np.ndarray, opts: VadOptions | None = None) -> list[Segment]: ...

    def feed(self, opts: VadOptions | None = None) -> SegmentFeed: ...

    def stream(
        self, blocks: Iterable[np.ndarray], opts: VadOptions | None = None
    ) -> Iterator[SpeechChunk]: ...


def _check_block(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise AudioError("Audio for VAD must be mono (a one-dimensional array).")
    if audio.dtype != np.float32:
        if np.issubdtype(audio.dtype, np.integer):
            # Integer PCM fed as-is would be scaled wrongly (funasr scales int16 a second time).
            raise AudioError("Audio for VAD must be float32 in [-1, 1], not integer PCM.")
        audio = audio.astype(np.float32)
    return audio


def _frame_energy_db(audio: np.ndarray, hop: int = 160, win: int = 400) -> np.ndarray:
    """Short-time energy in dB per 10 ms hop, smoothed over 100 ms so a cut lands in a pause."""
    if len(audio) < win:
        return np.full(1, 10 * np.log10(float(np.mean(audio**2)) + 1e-10))
    n = (len(audio) - win) // hop + 1
    power = np.square(audio.astype(np.float64))
    csum = np.concatenate(([0.0], np.cumsum(power)))
    starts = np.arange(n) * hop
    energy = (csum[starts + win] - csum[starts]) / win
    kernel = np.ones(10) / 10
    smooth = np.convolve(energy, kernel, mode="same")
    return 10 * np.log10(smooth + 1e-10)


def quietest_cut(audio: np.ndarray, lo: int, hi: int) -> int:
    """Sample index in [lo, hi) of `audio` where the smoothed energy is lowest.

    Among near-equal minima (within 1 dB) the latest one wins, so segments stay long.
    """
    lo = max(0, lo)
    hi = min(len(audio), hi)
    if hi - lo < 800:
        return hi
    hop = 160
    db = _frame_energy_db(audio[lo:hi], hop=hop)
    best = float(db.min())
    idx = int(np.nonzero(db <= best + 1.0)[0][-1])
    # The energy frame covers [idx*hop, idx*hop + 400); its centre is the cut.
    return lo + idx * hop + 200


class _Segmenter:
    """Turns a backend's raw regions into padded, merged, capped segments over a block stream."""

    name = "base"

    def open_stream(self, opts: VadOptions) -> RegionStream:  # pragma: no cover - abstract
        raise NotImplementedError

    def segment(self, audio: np.ndarray, opts: VadOptions | None = None) -> list[Segment]:
        """Segments of a whole recording (float32 mono 16 kHz), in order, non-overlapping."""
        audio = _check_block(audio)
        block = SAMPLE_RATE * 60
        blocks = (audio[i : i + block] for i in range(0, len(audio), block))
        return [c.segment for c in self.stream(blocks, opts)]

    def stream(
        self, blocks: Iterable[np.ndarray], opts: VadOptions | None = None
    ) -> Iterator[SpeechChunk]:
        """Segments with their audio, yielded as soon as they are final.

        `blocks` is any iterable of float32 mono 16 kHz arrays (of any sizes). Audio is kept only
        from the start of the segment being built, so memory does not grow with the input.
        """
        feed = self.feed(opts)
        for block in blocks:
            yield from feed.push(block)
        yield from feed.finish()

    def feed(self, opts: VadOptions | None = None) -> SegmentFeed:
        """The push form of `stream`: blocks are handed in one at a time and the segments they
        complete come back (several streams fed in step: one per channel of a recording)."""
        opts = opts or VadOptions()
        return SegmentFeed(_SegmentState(opts), self.open_stream(opts))


class SegmentFeed:
    """One stream's segmenter, fed block by block (`_Segmenter.feed`)."""

    def __init__(self, state: _SegmentState, regions: RegionStream) -> None:
        self._state = state
        self._regions = regions

    def push(self, block: np.ndarray) -> list[SpeechChunk]:
        """Feed the next block; returns the segments that became final."""
        block = _check_block(block)
        if len(block) == 0:
            return []
        self._state.append(block)
        closed = self._regions.push(block)
        return list(self._state.step(closed, self._regions.open_start, self._regions.frontier, final=False))

    def finish(self) -> list[SpeechChunk]:
        """End of input: the segments still pending."""
        closed = self._regions.finish()
        return list(self._state.step(closed, None, self._state.total, final=True))


_ROPE_MERGE = SAMPLE_RATE  # samples: small blocks are joined up to this length


class _Rope:
    """Audio kept as the blocks it arrived in (absolute sample indices): appending and dropping
    the front copy nothing, so holding minutes of audio ahead of the VAD's decisions costs no
    more per block than holding seconds; a span is copied out when a segment is emitted."""

    def __init__(self) -> None:
        self.blocks: collections.deque[np.ndarray] = collections.deque()
        self.start = 0  # absolute index of the first sample held
        self.end = 0  # absolute index after the last

    def append(self, block: np.ndarray) -> None:
        if len(block):
            if self.blocks and len(self.blocks[-1]) + len(block) <= _ROPE_MERGE:
                # Live audio comes in blocks of tens of ms: joined up to a second, so copying out
                # an open segment (every partial) walks tens of blocks, not hundreds.
                self.blocks[-1] = np.concatenate((self.blocks[-1], block))
            else:
                self.blocks.append(block)
            self.end += len(block)

    def pieces(self, a: int, b: int) -> list[np.ndarray]:
        """Views of samples [a, b) (clamped to what is held), block by block: nothing copied."""
        a, b = max(a, self.start), min(b, self.end)
        parts = []
        pos = self.start
        for block in self.blocks:
            nxt = pos + len(block)
            if nxt > a and pos < b:
                parts.append(block[max(a - pos, 0) : min(b, nxt) - pos])
            if nxt >= b:
                break
            pos = nxt
        return parts

    def slice(self, a: int, b: int) -> np.ndarray:
        """A copy of samples [a, b), clamped to what is held."""
        parts = self.pieces(a, b)
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)

    def drop_before(self, pos: int) -> None:
        while self.blocks and self.start + len(self.blocks[0]) <= pos:
            self.start += len(self.blocks.popleft())
        if self.blocks and pos > self.start:
            self.blocks[0] = self.blocks[0][pos - self.start :]
            self.start = pos
        self.start = max(self.start, min(pos, self.end))


class _SegmentState:
    """Audio buffer plus the pad / merge / cut rules shared by all backends (all in samples)."""

    def __init__(self, opts: VadOptions) -> None:
        self.max_len = int(opts.max_segment_s * SAMPLE_RATE)
        self.min_len = int(opts.min_segment_s * SAMPLE_RATE)
        self.merge_gap = int(opts.merge_gap_s * SAMPLE_RATE)
        self.pad = opts.speech_pad_ms * SAMPLE_RATE // 1000
        self.min_speech = opts.min_speech_ms * SAMPLE_RATE // 1000
        self.buf = _Rope()  # audio from where a future segment may still begin
        self.total = 0  # samples received so far
        self.cursor = 0  # speech before this has been emitted
        self.last_end = 0  # end of the last emitted segment (padding included)
        # Merged speech not yet emitted: (start, end, starts_at_forced_cut).
        self.pending: tuple[int, int, bool] | None = None

    def append(self, block: np.ndarray) -> None:
        self.buf.append(block)
        self.total += len(block)

    def _emit(self, next_start: int | None) -> SpeechChunk:
        assert self.pending is not None
        start, end, cut = self.pending
        self.pending = None
        left = start if cut else max(start - self.pad, self.last_end, self.buf.start)
        right = end + self.pad
        if next_start is not None:
            # Never pad into the next segment's speech.
            right = min(right, max(end, (end + next_start) // 2))
        right = min(right, self.total)
        self.last_end = right
        self.cursor = max(self.cursor, end)
        audio = self.buf.slice(left, right)
        return SpeechChunk(Segment(left, right), audio)

    def _fits(self, start: int, end: int) -> bool:
        return (end - start) + 2 * self.pad <= self.max_len

    def _mergeable(self, start: int) -> bool:
        """Can speech starting at `start` join the pending span (given it ends by the cap)?"""
        if self.pending is None:
            return False
        p_start, p_end, _ = self.pending
        short = (p_end - p_start) < self.min_len
        return start <= p_end or start - p_end <= self.merge_gap or short

    def _add(self, start: int, end: int) -> Iterator[SpeechChunk]:
        start = max(start, self.cursor)
        if end <= start:
            return
        if self.pending is not None:
            p_start, p_end, p_cut = self.pending
            if self._mergeable(start) and (start <= p_end or self._fits(p_start, end)):
                self.pending = (p_start, max(p_end, end), p_cut)
                yield from self._cut_long()
                return
            yield self._emit(start)
            start = max(start, self.cursor)
        self.pending = (start, end, False)
        yield from self._cut_long()

    def _cut_long(self) -> Iterator[SpeechChunk]:
        """While the pending span is over the cap, cut it at the quietest point below the cap."""
        while self.pending is not None and not self._fits(self.pending[0], self.pending[1]):
            p_start, p_end, p_cut = self.pending
            # Search the later three quarters: a cut near the start would leave a tiny segment.
            lo = p_start + self.max_len // 4
            hi = p_start + self.max_len - 2 * self.pad
            lo_held, hi_held = max(lo, self.buf.start), min(hi, self.buf.end)
            span = self.buf.slice(lo_held, hi_held)
            cut = lo_held + quietest_cut(span, 0, len(span))
            cut = min(max(cut, p_start + 1), hi)
            self.pending = (p_start, cut, p_cut)
            yield self._emit(cut)
            self.pending = (cut, p_end, True)
            self.cursor = cut

    def step(
        self,
        closed: list[tuple[int, int]],
        open_start: int | None,
        frontier: int,
        final: bool,
    ) -> Iterator[SpeechChunk]:
        for start, end in closed:
            if end - start >= self.min_speech:
                yield from self._add(start, min(end, self.total))
        if open_start is not None:
            # Speech still going on. Fold it in once it would break the cap, so a long monologue
            # is cut now instead of piling up in memory until the backend closes it.
            o_start = max(open_start, self.cursor)
            decided = min(frontier, self.total)  # speech is only known up to the frontier
            base = self.pending[0] if self._mergeable(o_start) and self.pending else o_start
            if decided > o_start and not self._fits(base, decided):
                yield from self._add(o_start, decided)
        if self.pending is not None:
            p_start, p_end, _ = self.pending
            next_start = open_start if open_start is not None else frontier
            no_merge = next_start - p_end > max(self.merge_gap, self.pad) and (
                p_end - p_start >= self.min_len
            )
            if final or no_merge or not self._fits(p_start, next_start):
                yield self._emit(None if open_start is None else open_start)
        # Keep audio only from where a future segment may still begin (padding included).
        keep = frontier - self.pad
        if self.pending is not None:
            keep = min(keep, self.pending[0] - (0 if self.pending[2] else self.pad))
        if open_start is not None:
            keep = min(keep, max(open_start, self.cursor) - self.pad)
        keep = min(max(keep, self.last_end, self.buf.start), self.total)
        if keep > self.buf.start:
            self.buf.drop_before(keep)


class LiveSegmenter:
    """The segmenter of `_Segmenter.stream` for audio that arrives as it is spoken: the caller
    appends what came in, has the regions decided (for many streams at once:
    `SileroVad.decide_streams` over their `.regions`), then `advance` returns the segments that
    are final. `open_audio` is the speech not yet final (for partial text). Not thread-safe: one
    caller at a time."""

    def __init__(self, regions: SileroLiveStream, opts: VadOptions) -> None:
        self.regions = regions
        self.state = _SegmentState(opts)
        self.pad = self.state.pad

    @property
    def total(self) -> int:
        return self.state.total

    def append(self, block: np.ndarray) -> None:
        block = _check_block(block)
        if len(block):
            self.state.append(block)
            self.regions.append(block)

    def advance(self) -> list[SpeechChunk]:
        """Segments that became final with the frames decided since the last call."""
        r = self.regions
        return list(self.state.step(r.take_closed(), r.open_start, r.frontier, final=False))

    def finish(self) -> list[SpeechChunk]:
        """End of input: every segment still open, final."""
        closed = self.regions.finish()
        return list(self.state.step(closed, None, self.state.total, final=True))

    def open_audio(self) -> SpeechChunk | None:
        """The speech heard so far that no segment holds yet (with the padding a segment would
        get before it), up to the last sample received; None during silence."""
        st = self.state
        if st.pending is not None:
            start = st.pending[0] if st.pending[2] else st.pending[0] - self.pad
        elif self.regions.open_start is not None:
            start = max(self.regions.open_start, st.cursor) - self.pad
        else:
            return None
        start = max(start, st.last_end, st.buf.start)
        if start >= st.total:
            return None
        return SpeechChunk(Segment(start, st.total), st.buf.slice(start, st.total))


# --------------------------------------------------------------------------------------------
# No VAD


class WholeAudio(_Segmenter):
    """No voice detection: the whole recording is one segment, cut only where it must be (over
    `max_segment_s`) at its quietest points, as the engine cuts a long clip. Long audio then
    streams through the same path as VAD segments instead of being decoded whole."""

    name = "none"

    def open_stream(self, opts: VadOptions) -> RegionStream:
        return _AllSpeech()

    @staticmethod
    def options(max_segment_s: float) -> VadOptions:
        """Options that keep every sample: no padding, no merging rules, no minimum length."""
        return VadOptions(max_segment_s=max_segment_s, min_segment_s=0.0, merge_gap_s=0.0,
                          speech_pad_ms=0, min_speech_ms=0)


class _AllSpeech:
    """One speech region from the first sample to the last."""

    def __init__(self) -> None:
        self.total = 0

    @property
    def open_start(self) -> int | None:
        return 0

    @property
    def frontier(self) -> int:
        return self.total

    def push(self, audio: np.ndarray) -> list[tuple[int, int]]:
        self.total += len(audio)
        return []

    def finish(self) -> list[tuple[int, int]]:
        return [(0, self.total)] if self.total else []


# --------------------------------------------------------------------------------------------
# Silero VAD


_SILERO_FRAME = 512  # samples per Silero decision at 16 kHz (32 ms)
_SILERO_CONTEXT = 64  # samples of the previous frame Silero sees with each frame


def silero_file(name: str = "silero_vad.onnx") -> Path:
    """A file of the silero-vad package's data: its ONNX model (onnxruntime's form) or
    `silero_vad.jit` (the same network and weights, which the PyTorch path reads)."""
    # Located without importing `silero_vad`: its package import calls
    # torch.set_num_threads(1), which would slow every other torch user in the process.
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "Silero VAD is not installed; install the 'silero-vad' package (its weights ship "
            "inside it)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise ModelLoadError(f"Silero VAD weights are missing from the package ({path}).")
    return path


class SileroVad(_Segmenter):
    """Silero VAD (trained; weights ship in the `silero-vad` wheel), run with onnxruntime on the
    CPU, or with `device` as a PyTorch network (`asr.pipeline.silero_torch`) that decides all
    frames of a block, or of a tick of every live stream, in one batched call.

    The ONNX form is used rather than TorchScript because its recurrent state is passed in and
    out explicitly: one loaded model serves any number of threads without a lock, and there is no
    TorchScript profiling warm-up that makes the first minutes of audio slow.

    Silero decides one 32 ms frame per call. To cut the per-call overhead, a block of audio is
    split into `lanes` slices decided side by side as one batch; each slice first replays the
    `warmup_s` of audio before it, so its recurrent state is warm where its own frames begin.

    A block depends only on its own audio and the `warmup_s` before it, so a long recording's
    blocks are decided by `workers` threads at once (onnxruntime releases the GIL while it runs)
    and their regions read in order: the same frames, the same probabilities, the same segments
    as one thread gives, several times sooner on a machine with the cores.
    """

    name = "silero"

    def __init__(
        self, lanes: int = 16, lane_s: float = 8.0, warmup_s: float = 1.0, threads: int = 1,
        workers: int = 1, device: str | None = None, network: Any = None,
    ) -> None:
        if lanes < 1 or lane_s <= 0 or warmup_s < 0 or workers < 1:
            raise VadOptionsError("lanes, lane_s, warmup_s and workers must be positive.")
        self._torch: Any = None
        self._session: Any = None
        if network is not None:
            # `TorchSilero.lane_probs` run elsewhere (the engine's process, `vad_in_engine`): recordings only.
            self._torch = network
        elif device is not None:
            from asr.pipeline.silero_torch import TorchSilero

            self._torch = TorchSilero(device)
        else:
            self._session = self._onnx_session(threads)
        self.workers = workers
        # One pool for every recording: a server's concurrent long uploads share the cores.
        self._pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="asr-silero") if workers > 1 else None
        )
        self.lanes = lanes
        self.lane_frames = max(1, int(lane_s * SAMPLE_RATE) // _SILERO_FRAME)
        self.warm_frames = int(warmup_s * SAMPLE_RATE) // _SILERO_FRAME

    @staticmethod
    def _onnx_session(threads: int) -> Any:
        try:
            import onnxruntime as ort

            so = ort.SessionOptions()
            # A tiny model: more threads only contend with the recogniser for the cores.
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            return ort.InferenceSession(str(silero_file()), so, providers=["CPUExecutionProvider"])
        except ModelLoadError:
            raise
        except Exception as exc:  # missing onnxruntime, corrupt file
            raise ModelLoadError(f"Silero VAD could not be loaded: {exc}") from exc

    def open_stream(self, opts: VadOptions) -> RegionStream:
        return _SileroRegions(self, opts)

    def frame_probs(self, history: np.ndarray, audio: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Speech probability of each 512-sample frame of `audio` (zero-padded at the end).

        `history` is the audio just before `audio`; its last `warmup_s` warm the first lane.
        `audio` may be given as consecutive pieces (a file's blocks as received): they are
        copied once, into the padded signal the lanes are cut from.
        """
        pieces = [audio] if isinstance(audio, np.ndarray) else list(audio)
        n_samples = sum(len(p) for p in pieces)
        frame, ctx = _SILERO_FRAME, _SILERO_CONTEXT
        n_frames = -(-n_samples // frame)
        if n_frames == 0:
            return np.zeros(0, dtype=np.float32)
        warm = self.warm_frames * frame
        history = history[len(history) - min(len(history), warm + ctx) :]
        head = warm + ctx
        lane = self.lane_frames * frame
        n_lanes = -(-n_frames // self.lane_frames)
        steps = self.warm_frames + min(self.lane_frames, n_frames)
        width = steps * frame + ctx
        # Lane i is ext[i * lane : i * lane + width]: lanes overlap by their warm-up, so they are
        # cut as views (on the GPU, or a strided view here) rather than copied out one by one.
        ext = np.zeros(max(head + n_frames * frame, (n_lanes - 1) * lane + width), dtype=np.float32)
        ext[head - len(history) : head] = history
        at = head
        for piece in pieces:
            ext[at : at + len(piece)] = piece
            at += len(piece)
        if self._torch is not None:
            out = self._torch.lane_probs(ext, n_lanes, lane, steps)
        else:
            lanes = np.lib.stride_tricks.as_strided(ext, (n_lanes, width), (lane * ext.itemsize, ext.itemsize))
            state = np.zeros((2, n_lanes, 128), dtype=np.float32)
            sr = np.array(SAMPLE_RATE, dtype=np.int64)
            out = np.empty((n_lanes, steps), dtype=np.float32)
            for j in range(steps):
                # Each call sees 64 samples of context before its 512-sample frame, as Silero expects.
                x = np.ascontiguousarray(lanes[:, j * frame : j * frame + frame + ctx])
                prob, state = self._session.run(None, {"input": x, "state": state, "sr": sr})
                out[:, j] = prob[:, 0]
        return out[:, self.warm_frames :].reshape(-1)[:n_frames]

    def open_live(self, opts: VadOptions) -> SileroLiveStream:
        """A stream for audio that arrives as it is spoken (see `SileroLiveStream`)."""
        return SileroLiveStream(self, opts)

    def decide_streams(self, streams: Sequence[SileroLiveStream]) -> int:
        """Decide every complete frame the streams hold: one batched Silero call per frame
        position across all streams (each keeps its own recurrent state), so a thousand live
        connections cost a few calls per tick instead of thousands. Returns the frames decided."""
        if self._torch is not None:
            return self._decide_streams_torch(streams)
        sr = np.array(SAMPLE_RATE, dtype=np.int64)
        decided = 0
        while True:
            ready = [s for s in streams if s.ready]
            if not ready:
                return decided
            x = np.stack([s.next_input() for s in ready])
            state = np.concatenate([s.state for s in ready], axis=1)
            prob, state = self._session.run(None, {"input": x, "state": state, "sr": sr})
            for i, s in enumerate(ready):
                s.accept(float(prob[i, 0]), state[:, i : i + 1].copy())
            decided += len(ready)

    def _decide_streams_torch(self, streams: Sequence[SileroLiveStream]) -> int:
        """Every ready frame of every stream in one call: the fronts of all frames batched, the
        recurrence over each stream's frames as one packed LSTM."""
        ready = [s for s in streams if s.ready]
        if not ready:
            return 0
        counts = [s.ready for s in ready]
        windows = _stream_windows(ready, counts)
        state = np.concatenate([s.state for s in ready], axis=1)
        probs, after = self._torch.stream_probs(windows, counts, state)
        at = 0
        for i, (s, n) in enumerate(zip(ready, counts)):
            s.accept_frames(probs[at : at + n].tolist(), after[:, i : i + 1].copy())
            at += n
        return at


def _stream_windows(streams: Sequence[SileroLiveStream], counts: Sequence[int]) -> np.ndarray:
    """The next `counts[i]` frames of each stream, each with the 64 samples of context before it,
    in stream order: (sum(counts), 576). One gather over all streams (a strided view per stream
    was a fifth of the live VAD hop's CPU at 300 streams)."""
    parts = []
    for s, n in zip(streams, counts):
        parts += (s.context, s.todo[: n * _SILERO_FRAME])
    flat = np.concatenate(parts)
    n_frames = np.asarray(counts)
    stream_start = np.cumsum(np.concatenate(([0], _SILERO_CONTEXT + n_frames[:-1] * _SILERO_FRAME)))
    first = np.repeat(stream_start - np.cumsum(np.concatenate(([0], n_frames[:-1]))) * _SILERO_FRAME, n_frames)
    starts = first + np.arange(int(n_frames.sum())) * _SILERO_FRAME
    return flat[starts[:, None] + np.arange(_SILERO_FRAME + _SILERO_CONTEXT)]


class _Hysteresis:
    """Speech regions from frame probabilities, by the rules of Silero's get_speech_timestamps:
    speech starts at a frame above `threshold` and ends once frames stay below
    `threshold - 0.15` for `min_silence_ms` (the region ends at the first of those frames)."""

    def __init__(self, opts: VadOptions) -> None:
        self.threshold = opts.threshold
        self.neg_threshold = max(opts.threshold - 0.15, 0.01)
        self.min_silence = opts.min_silence_ms * SAMPLE_RATE // 1000
        self.speech_start: int | None = None
        self.temp_end: int | None = None

    def frame(self, prob: float, pos: int) -> tuple[int, int] | None:
        """Take the frame starting at sample `pos`; return the region it closes, if any."""
        if self.speech_start is None:
            if prob >= self.threshold:
                self.speech_start = pos
                self.temp_end = None
            return None
        if prob >= self.threshold:
            self.temp_end = None
        elif prob < self.neg_threshold:
            if self.temp_end is None:
                self.temp_end = pos
            if pos - self.temp_end >= self.min_silence:
                region = (self.speech_start, self.temp_end)
                self.speech_start = None
                self.temp_end = None
                return region
        return None

    def close(self, total: int) -> list[tuple[int, int]]:
        """End of input: the region still open, ended at its silence or at `total`."""
        if self.speech_start is None:
            return []
        end = self.temp_end if self.temp_end is not None else total
        region = (self.speech_start, end)
        self.speech_start = None
        return [region]

    def frames(self, probs: np.ndarray, base: int, step: int) -> list[tuple[int, int]]:
        """`frame` over consecutive frames (frame i starts at `base + i * step`), the regions they
        close. The same rules, but only the frames where the state can change are visited,
        found with array searches: an hour of audio is 112,500 Silero frames, a Python call for
        each 33 ms of the GIL here (17 ms this way), in the process that feeds the GPU."""
        probs = np.asarray(probs)
        above = np.flatnonzero(probs >= self.threshold)
        below = np.flatnonzero(probs < self.neg_threshold)
        n = len(probs)

        def first(indices: np.ndarray, at: int) -> int:
            k = int(np.searchsorted(indices, at))
            return int(indices[k]) if k < len(indices) else n

        regions = []
        i = 0
        while i < n:
            if self.speech_start is None:
                i = first(above, i)
                if i < n:
                    self.speech_start, self.temp_end = base + i * step, None
            elif self.temp_end is None:
                i = first(below, i)  # frames in between (or above) leave the state as it is
                if i < n:  # a silence begins (min_silence is at least one frame: nothing closes yet)
                    self.temp_end = base + i * step
            else:
                # The silence ends at the next frame above the threshold, or closes the region at
                # the first frame below the lower one `min_silence` after it began.
                closing_from = -(-(self.temp_end + self.min_silence - base) // step)
                rise, close = first(above, i), first(below, max(i, closing_from))
                if rise < close:
                    self.temp_end, i = None, rise
                elif close < n:
                    regions.append((self.speech_start, self.temp_end))
                    self.speech_start, self.temp_end, i = None, None, close
                else:
                    i = n
            i += 1
        return regions


class _SileroRegions:
    """Hysteresis over Silero frame probabilities, decided in large blocks (files). With a pool,
    up to two blocks per worker are decided ahead while the hysteresis reads them in order."""

    def __init__(self, vad: SileroVad, opts: VadOptions) -> None:
        self.vad = vad
        self.rules = _Hysteresis(opts)
        self.block = vad.lanes * vad.lane_frames * _SILERO_FRAME
        self.todo = _Rope()  # received, not yet handed to a decider
        self.history = np.zeros(0, dtype=np.float32)  # audio just before `todo`, for warm-up
        self.deciding: collections.deque[tuple[Future[np.ndarray], int]] = collections.deque()
        self.done = 0  # samples whose frames the hysteresis has read
        self.total = 0

    @property
    def open_start(self) -> int | None:
        return self.rules.speech_start

    @property
    def frontier(self) -> int:
        return min(self.done, self.total)

    def push(self, audio: np.ndarray) -> list[tuple[int, int]]:
        self.todo.append(audio)
        self.total += len(audio)
        while self.todo.end - self.todo.start >= self.block:
            start = self.todo.start
            self._submit(self.todo.pieces(start, start + self.block))
            self.todo.drop_before(start + self.block)
        # One block ahead per worker: the audio held here stays a few blocks, whatever the length.
        return self._read(ahead=self.vad.workers)

    def finish(self) -> list[tuple[int, int]]:
        if self.todo.end > self.todo.start:
            self._submit(self.todo.pieces(self.todo.start, self.todo.end))
            self.todo.drop_before(self.todo.end)
        return self._read(ahead=0) + self.rules.close(self.total)

    def _submit(self, pieces: list[np.ndarray]) -> None:
        pool = self.vad._pool
        if pool is None:
            future: Future[np.ndarray] = Future()
            future.set_result(self.vad.frame_probs(self.history, pieces))
        else:
            future = pool.submit(self.vad.frame_probs, self.history, pieces)
        # The next block's warm-up: the last samples only (a block is minutes of audio).
        keep = self.vad.warm_frames * _SILERO_FRAME + _SILERO_CONTEXT
        tail: list[np.ndarray] = []
        held = 0
        for piece in reversed([self.history, *pieces]):
            if held >= keep:
                break
            tail.insert(0, piece[max(0, len(piece) - (keep - held)) :])
            held += len(tail[0])
        self.history = np.concatenate(tail) if tail else self.history
        self.deciding.append((future, sum(len(p) for p in pieces)))

    def _read(self, ahead: int) -> list[tuple[int, int]]:
        """Regions from the decided blocks at the head; waits while more than `ahead` are
        still being decided."""
        regions = []
        while self.deciding and (self.deciding[0][0].done() or len(self.deciding) > ahead):
            future, n = self.deciding.popleft()
            probs = future.result()
            regions += self.rules.frames(probs, self.done, _SILERO_FRAME)
            self.done += n
        return regions


class SileroLiveStream:
    """Silero over audio that arrives as it is spoken (live captions): every complete 32 ms frame
    is decided as soon as it is received, with the recurrent state carried from frame to frame
    (no warm-up replay, unlike the file path's lanes). Many streams are decided together, one
    batched call per frame position, by `SileroVad.decide_streams`; `push` decides one stream
    alone. A `RegionStream`."""

    def __init__(self, vad: SileroVad, opts: VadOptions) -> None:
        self.vad = vad
        self.rules = _Hysteresis(opts)
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(_SILERO_CONTEXT, dtype=np.float32)
        self.todo = np.zeros(0, dtype=np.float32)
        self.done = 0
        self.total = 0
        self.closed: list[tuple[int, int]] = []

    @property
    def open_start(self) -> int | None:
        return self.rules.speech_start

    @property
    def frontier(self) -> int:
        return self.done

    def append(self, audio: np.ndarray) -> None:
        """Receive audio; it is decided by the next `decide_streams` (or `push`)."""
        self.todo = np.concatenate((self.todo, audio))
        self.total += len(audio)

    @property
    def ready(self) -> int:
        """Complete frames received and not decided yet."""
        return len(self.todo) // _SILERO_FRAME

    def next_input(self) -> np.ndarray:
        """The next frame with the context Silero expects before it (64 + 512 samples)."""
        return np.concatenate((self.context, self.todo[:_SILERO_FRAME]))

    def accept_frames(self, probs: list[float], state: np.ndarray) -> None:
        """Decisions on the next `len(probs)` frames and the recurrent state after the last."""
        for prob in probs:
            self.accept(prob, state)

    def accept(self, prob: float, state: np.ndarray) -> None:
        """The decision on the frame `next_input` gave, and the recurrent state after it."""
        frame = self.todo[:_SILERO_FRAME]
        self.context = frame[-_SILERO_CONTEXT:].copy()
        self.todo = self.todo[_SILERO_FRAME:]
        self.state = state
        region = self.rules.frame(prob, self.done)
        self.done += _SILERO_FRAME
        if region is not None:
            self.closed.append(region)

    def take_closed(self) -> list[tuple[int, int]]:
        """Regions closed since the last call."""
        closed, self.closed = self.closed, []
        return closed

    def push(self, audio: np.ndarray) -> list[tuple[int, int]]:
        self.append(audio)
        self.vad.decide_streams([self])
        return self.take_closed()

    def finish(self) -> list[tuple[int, int]]:
        """End of input: the last partial frame is decided zero-padded, the open region closed."""
        if len(self.todo):
            pad = _SILERO_FRAME - len(self.todo) % _SILERO_FRAME
            if pad < _SILERO_FRAME:
                self.todo = np.concatenate((self.todo, np.zeros(pad, np.float32)))
            self.vad.decide_streams([self])
        return self.take_closed() + self.rules.close(self.total)


# --------------------------------------------------------------------------------------------
# FSMN-VAD (FunASR)


def _load_config(model_dir: Path) -> dict[str, Any]:
    from asr.engine.model import read_model_config

    return read_model_config(model_dir, "FsmnVADStreaming", "FSMN-VAD")


class FsmnVad(_Segmenter):
    """FunASR's FSMN-VAD (`FsmnVADStreaming` + `WavFrontendOnline`) from a funasr-format model dir.

    The model and frontend are built through funasr's registry exactly as `AutoModel` would, but
    without `AutoModel`'s side effects (logging.basicConfig, a version print, torch.set_num_threads,
    hub look-ups). funasr's VAD writes per-call values into the shared model (`vad_opts`), so calls
    are serialised with a lock; each stream keeps its own funasr cache.
    """

    name = "fsmn"

    def __init__(self, model_dir: str | Path, chunk_ms: int = 2000) -> None:
        model_dir = Path(model_dir)
        conf = _load_config(model_dir)
        for name in ("model.pt", "am.mvn"):
            if not (model_dir / name).is_file():
                raise ModelLoadError(f"The VAD model at {model_dir} has no {name}.")
        try:
            import torch

            from asr.engine.model import funasr_registry

            tables = funasr_registry(conf)

            frontend_cls = tables.frontend_classes.get(conf["frontend"])
            model_cls = tables.model_classes.get(conf["model"])
            if frontend_cls is None or model_cls is None:
                raise ModelLoadError("funasr could not register the FSMN-VAD classes.")
            self._frontend = frontend_cls(
                cmvn_file=str(model_dir / "am.mvn"), **conf.get("frontend_conf", {})
            )
            self._model = model_cls(
                encoder=conf["encoder"], encoder_conf=conf["encoder_conf"],
                **conf.get("model_conf", {}),
            )
            state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
            self._model.load_state_dict(state, strict=True)
            self._model.eval()
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"The VAD model at {model_dir} could not be loaded: {exc}") from exc
        self._torch = torch
        self._lock = threading.Lock()
        self.chunk_ms = chunk_ms
        self.model_dir = model_dir

    def open_stream(self, opts: VadOptions) -> RegionStream:
        return _FsmnRegions(self, opts)

    def _infer(self, cache: dict, audio: np.ndarray, final: bool, opts: VadOptions) -> list:
        torch = self._torch
        with self._lock, torch.inference_mode():
            results, _ = self._model.inference(
                [torch.from_numpy(audio)],
                key=["stream"],
                frontend=self._frontend,
                cache=cache,
                is_final=final,
                # Streaming events ([start, -1], [-1, end], [start, end]) so a started region is
                # known before it ends; an explicit end silence also fixes funasr's threshold
                # (its dynamic schedule would change it with the amount of speech seen).
                is_streaming_input=True,
                chunk_size=self.chunk_ms,
                max_end_silence_time=opts.min_silence_ms,
                device="cpu",
            )
        return results[0]["value"]


class _FsmnRegions:
    """Turns funasr's streaming VAD events into regions (samples)."""

    def __init__(self, vad: FsmnVad, opts: VadOptions) -> None:
        self.vad = vad
        self.opts = opts
        self.cache: dict = {}
        # funasr ignores an empty final call, so the latest block is held back until the next
        # block (or the end) arrives and is sent with is_final set on the last one.
        self.held: np.ndarray | None = None
        self.sent = 0
        self.speech_start: int | None = None

    @property
    def open_start(self) -> int | None:
        return self.speech_start

    @property
    def frontier(self) -> int:
        # funasr keeps audio shorter than its chunk in the cache unprocessed, and confirms a
        # speech start up to a detection window (200 ms) after it: stay a second behind that.
        unprocessed = len(self.cache.get("prev_samples", ()))
        return max(0, self.sent - unprocessed - SAMPLE_RATE)

    def _events(self, audio: np.ndarray, final: bool) -> list[tuple[int, int]]:
        regions = []
        for beg, end in self.vad._infer(self.cache, audio, final, self.opts):
            ms = SAMPLE_RATE // 1000
            if beg >= 0:
                self.speech_start = beg * ms
            if end >= 0 and self.speech_start is not None:
                regions.append((self.speech_start, end * ms))
                self.speech_start = None
        self.sent += len(audio)
        return regions

    def push(self, audio: np.ndarray) -> list[tuple[int, int]]:
        held, self.held = self.held, audio
        return self._events(held, final=False) if held is not None else []

    def finish(self) -> list[tuple[int, int]]:
        regions = self._events(self.held, final=True) if self.held is not None else []
        self.held = None
        if self.speech_start is not None:
            regions.append((self.speech_start, self.sent))
            self.speech_start = None
        return regions


def make_fsmn_vad_dir(path: str | Path, seed: int = 0, decibel_thres: float = -30.0) -> Path:
    """Write an FSMN-VAD model dir in funasr's format with seeded random weights (for tests).

    Random FSMN weights call every frame speech, so `decibel_thres` makes the model a
    deterministic energy VAD: frames quieter than it (dB of the 25 ms frame's energy) are silence.
    """
    from importlib import resources

    import torch
    import yaml

    from asr.engine.model import funasr_registry

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    conf = yaml.safe_load(
        resources.files("asr.engine.model_configs").joinpath("fsmn_vad.config.yaml").read_text("utf-8")
    )
    conf["model_conf"]["decibel_thres"] = float(decibel_thres)
    tables = funasr_registry(conf)
    torch.manual_seed(seed)
    model = tables.model_classes.get(conf["model"])(
        encoder=conf["encoder"], encoder_conf=conf["encoder_conf"], **conf["model_conf"]
    )
    torch.save(model.state_dict(), out / "model.pt")
    (out / "config.yaml").write_text(yaml.safe_dump(conf, allow_unicode=True), encoding="utf-8")
    dim = conf["encoder_conf"]["input_dim"]
    rng = np.random.default_rng(seed)

    def row(values: np.ndarray) -> str:
        return "<LearnRateCoef> 0 [ " + " ".join(f"{v:.6f}" for v in values) + " ]"

    lines = ["<Nnet>", f"<Splice> {dim} {dim}", "[ 0 ]", f"<AddShift> {dim} {dim}",
             row(-rng.normal(8.0, 2.0, dim)), f"<Rescale> {dim} {dim}",
             row(1.0 / rng.uniform(2.0, 4.0, dim)), "</Nnet>"]
    (out / "am.mvn").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def load_vad(
    kind: str = "silero", model_dir: str | Path | None = None, workers: int = 1, device: str | None = None,
    network: Any = None,
) -> VadBackend:
    """Build a VAD backend: 'silero' (weights from the silero-vad package; `workers` threads
    decide a long recording's blocks; on `device` with PyTorch, or with `network`, PyTorch's
    calls served elsewhere, else onnxruntime on the CPU) or 'fsmn' (model_dir)."""
    if kind == "silero":
        if device is not None or network is not None:
            # One GPU call decides a whole block's frames: blocks of 64 lanes (512 s) keep the
            # calls few; the lanes' boundaries, and so the probabilities, do not depend on it.
            return SileroVad(lanes=64, workers=min(workers, 2), device=device, network=network)
        return SileroVad(workers=workers)
    if kind == "fsmn":
        if model_dir is None:
            raise ModelLoadError("The FSMN VAD needs a model directory.")
        return FsmnVad(model_dir)
    raise VadOptionsError(f"Unknown VAD '{kind}'; choose 'silero' or 'fsmn'.")
