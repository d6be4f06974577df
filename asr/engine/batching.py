"""Batch planning for the engine: inputs checked, long clips cut, clips packed into length-sorted
batches under a padded-audio budget, and the pieces of a cut clip stitched back together.

Pure host-side code: no torch, no device. The engine runs the batches this module plans.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from asr.errors import AudioError
from asr.pipeline.audio import SAMPLE_RATE
from asr.pipeline.hotwords import HotwordList


@dataclass
class Batch:
    """Clips that run through the network together."""

    index: list[int]  # positions in the caller's clip list
    audios: list[np.ndarray]
    hotwords: list[HotwordList]

    def halves(self) -> list[Batch]:
        """The batch split in two (for a retry after the GPU ran out of memory)."""
        half = len(self.index) // 2
        return [Batch(self.index[a:b], self.audios[a:b], self.hotwords[a:b])
                for a, b in ((0, half), (half, len(self.index)))]


def per_item_hotwords(hotwords: Sequence[str] | Sequence[Sequence[str]] | None, n: int) -> list[HotwordList]:
    """One hotword list per input, from one list for all or one list per input."""
    if not hotwords:
        return [()] * n
    if all(isinstance(h, str) for h in hotwords):
        shared = tuple(hotwords)  # type: ignore[arg-type]
        return [shared] * n
    if len(hotwords) != n:
        raise ValueError(f"got {len(hotwords)} hotword lists for {n} inputs")
    return [tuple(h) for h in hotwords]  # type: ignore[arg-type]


def check_audio(audio: np.ndarray, index: int, *, finite: bool = True) -> np.ndarray:
    """A mono float32 array of finite samples, or AudioError naming the input. `finite=False`
    leaves the scan for NaN and infinity to whoever reads the samples next (the engine process)."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise AudioError(f"Input {index} must be mono (1-D), got shape {audio.shape}.")
    if audio.dtype.kind != "f":
        # int16 arrays would be scaled twice by the frontend: demand float in [-1, 1].
        raise AudioError(f"Input {index} must be float audio in [-1, 1], got {audio.dtype}.")
    if audio.size == 0:
        raise AudioError(f"Input {index} contains no samples.")
    audio = audio.astype(np.float32, copy=False)
    # min and max are NaN when any sample is, and infinite when one is: two passes without the
    # boolean array isfinite() would allocate (a third of a ms per 30 s clip on the engine's path).
    if finite and not (np.isfinite(audio.min()) and np.isfinite(audio.max())):
        raise AudioError(f"Input {index} contains NaN or infinite samples.")
    return audio


def split_long(audio: np.ndarray, max_clip_s: float) -> list[tuple[int, np.ndarray]]:
    """(offset, piece) of a clip cut where it is over `max_clip_s`, at its quietest 100 ms inside
    the last quarter of each window, so attention memory stays bounded and words are rarely split."""
    limit = int(max_clip_s * SAMPLE_RATE)
    if len(audio) <= limit:
        return [(0, audio)]
    hop = SAMPLE_RATE // 10
    pieces = []
    start = 0
    while len(audio) - start > limit:
        lo, hi = start + limit * 3 // 4, start + limit
        frames = audio[lo:hi][: (hi - lo) // hop * hop].reshape(-1, hop)
        cut = lo + int(np.argmin((frames**2).mean(axis=1))) * hop + hop // 2
        pieces.append((start, audio[start:cut]))
        start = cut
    pieces.append((start, audio[start:]))
    return pieces


def plan(
    clips: list[np.ndarray], hotwords: list[HotwordList], budget_s: float, max_batch_size: int,
    max_padding: float = 1.0,
) -> Iterator[Batch]:
    """Longest first, so each batch's padding is small; a batch holds at most `budget_s` of
    padded audio and `max_batch_size` clips, and padding at most `max_padding` of its padded
    audio (the CPU's choice: there every padded frame costs arithmetic; a GPU batch is bound by
    launches, and fewer batches win)."""
    order = sorted(range(len(clips)), key=lambda i: len(clips[i]), reverse=True)
    budget = budget_s * SAMPLE_RATE
    batch: list[int] = []
    held = 0  # samples of the clips in the batch
    for i in order:
        longest = len(clips[batch[0]]) if batch else len(clips[i])
        padded = longest * (len(batch) + 1)
        if batch and (
            padded > budget or len(batch) >= max_batch_size or padded - held - len(clips[i]) > max_padding * padded
        ):
            yield Batch(batch, [clips[j] for j in batch], [hotwords[j] for j in batch])
            batch, held = [], 0
        batch.append(i)
        held += len(clips[i])
    if batch:
        yield Batch(batch, [clips[j] for j in batch], [hotwords[j] for j in batch])
