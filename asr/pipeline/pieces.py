"""A long mp3 on disk decoded in pieces by several decoding processes at once, with the samples
of the one-process decoding (`audio.open_audio`) bit for bit.

One process decodes an hour of 44.1 kHz mp3 in ~1.65 s (a fast core), and everything downstream
waited on it. Here the recording is cut into pieces of `pipeline.decode_piece_s` seconds at
positions of the sequential decoding's sample stream; each piece is decoded and resampled in a
decoding process, and the pieces come back in order as the blocks of one `AudioStream`. At most
`in_flight` pieces are decoding or waiting at once (plus the one being read), so memory stays
bounded whatever the recording's length.

Why the samples are identical:
- MPEG audio frames are found by a frame index (every frame's byte offset, checked to chain from
  the first frame FFmpeg itself demuxes). A piece starts FFmpeg's demuxer at a frame boundary
  `_DECODER_PREROLL_FRAMES` frames early, which rebuilds the decoder's state (the bit reservoir
  reaches at most 511 bytes back; the IMDCT overlap and synthesis filter, a frame), and drops
  what those frames give.
- soxr (HQ) filters in blocks laid out from its stream's first input sample: a resampler started
  at a multiple of `_RESAMPLER_PERIOD[rate]` input samples, fed at least `_RESAMPLER_PREROLL_S`
  before the piece, computes the piece's outputs from the same blocks of the same samples. The
  periods were measured for libsoxr 0.1.3 (tests/test_decode_pieces.py checks each rate); with
  another libsoxr, or a rate not in the table, recordings decode in one process as before.
- FFmpeg's gapless trimming (the LAME/Lavf tag's encoder delay and padding) is read from the
  decoding itself (the start) and from the tag, with FFmpeg's own rule (the end).

Anything unexpected in a piece (a frame that does not decode, or decodes to another length; a
non-finite sample; a broken pool) makes the stream fall back to decoding sequentially in this
thread from the start, skipping what was already handed on: a damaged file then gives exactly
the sequential path's samples and typed errors. Only Layer III mp3 files are cut (ADTS AAC and
the rest keep one process: their decoders are not checked here).
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from math import gcd
from typing import Any

import numpy as np
import soxr

from asr.errors import AudioError
from asr.pipeline.audio import BLOCK_S, SAMPLE_RATE, AudioStream, _FrameGroup, _too_long, open_audio

# Input samples (at the source rate) between the block grids of soxr's HQ resampling to 16 kHz,
# measured with libsoxr 0.1.3-14 (a fresh stream started at any other multiple of the rate's
# phase unit differs from the sequential stream in the last bit of some samples).
_SOXR_MEASURED = "0.1.3"
_RESAMPLER_PERIOD = {
    8000: 830, 11025: 361620, 12000: 2490, 16000: 1, 22050: 109368, 24000: 2202, 32000: 1660,
    44100: 218736, 48000: 4404,
}  # fmt: skip
# Source audio the resampler is fed before a piece's first kept sample: its filter history (a
# few ms for HQ at these ratios) with a wide margin.
_RESAMPLER_PREROLL_S = 1.0
# Frames decoded (and dropped) before the first one the resampler is fed; 16 cover the bit
# reservoir of 8 kbps MPEG-2.5 frames (72 bytes each, a reservoir of up to 511 bytes).
_DECODER_PREROLL_FRAMES = 16
# Indexed audio left to the last piece: the pieces before it have room to feed their resamplers
# past their ends (soxr gives an output once the block holding it is complete).
_LOOKAHEAD_S = 2.0
# Decoded frames are converted and resampled about this much at a time (per-call costs were a
# fifth of a piece's time at 8 frames).
_GROUP_S = 1.0

_BITRATES_V1 = np.array([0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0])
_BITRATES_V2 = np.array([0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0])
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@dataclass(frozen=True)
class Piece:
    """One piece's decoding job: sample positions count the sequential decoding's source-rate
    samples (after FFmpeg's start trimming); frame k's first sample is k * spf - skip."""

    path: str
    rate: int
    channels: int
    split: bool
    spf: int
    skip: int
    first_frame: int  # the first frame demuxed (0: the file opened whole, as the sequential path)
    first_byte: int
    resample_from: int  # the resampler's first input sample: a multiple of the rate's period
    keep_from: int
    keep_to: int | None  # None: to the end of the file
    discard: tuple[int, int] | None  # FFmpeg's end trimming: (first, last) discarded sample


@dataclass(frozen=True)
class PiecePlan:
    """A recording cut into pieces, and its header as `open_audio` reads it."""

    pieces: tuple[Piece, ...]
    rate: int
    channels: int
    duration_s: float | None


def piece_rates() -> frozenset[int]:
    """Source rates whose pieces resample to the sequential samples with this libsoxr."""
    if not str(soxr.__libsoxr_version__).startswith(_SOXR_MEASURED):
        return frozenset({SAMPLE_RATE})
    return frozenset(_RESAMPLER_PERIOD)


def plan_pieces(
    path: str, piece_s: float, from_s: float, max_duration_s: float | None, split: bool = False
) -> PiecePlan | None:
    """The pieces of the mp3 at `path`, or None when it decodes in one process: not a Layer III
    mp3 (ADTS AAC and the rest), a rate without a measured resampler period, shorter than
    `from_s` by its header, longer than `max_duration_s` by its frames (the sequential path
    refuses it as it does today), or frames that do not chain. Run in a decoding process."""
    import av

    try:
        with open_audio(path, max_duration_s=max_duration_s, channels="split" if split else "mix") as header:
            rate, channels, duration_s = header.rate, header.channels, header.duration_s
    except Exception:  # noqa: BLE001 - the sequential path reports it, with its code
        return None
    if duration_s is None or duration_s < from_s or piece_s <= 0 or rate not in piece_rates():
        return None
    try:
        with av.open(path) as container:
            stream = container.streams.audio[0]
            if container.format.name != "mp3" or stream.codec_context.name not in ("mp3", "mp3float"):
                return None
            first_byte, skip, spf = _start(container, stream)
    except (av.error.FFmpegError, IndexError, StopIteration, ValueError):
        return None
    # Mapped, not read: the pages are the file's, given back under pressure (an hour of 128 kbps
    # mp3 is 57 MB); what the scan keeps is ~12 bytes a frame (~2 MB an hour).
    data = np.memmap(path, dtype=np.uint8, mode="r")
    frames = _frame_index(data, first_byte, rate, spf)
    if frames is None or len(frames) < 3 * _DECODER_PREROLL_FRAMES:
        return None
    if max_duration_s is not None and len(frames) * spf - skip > int(max_duration_s * rate) + 1:
        return None  # one process decodes it and refuses it where it does today
    discard = _end_trimming(bytes(data[:first_byte]), spf)
    # Piece starts keep the 16 kHz output grid (a whole number of outputs before them) and leave
    # the last indexed frames to the last piece (which decodes to the end of the file).
    unit = rate // gcd(rate, SAMPLE_RATE)
    step = max(unit, round(piece_s * rate / unit) * unit)
    indexed_end = len(frames) * spf - skip - int(_LOOKAHEAD_S * rate) - 2 * spf
    starts = list(range(0, indexed_end - step // 2, step))
    if len(starts) < 2:
        return None
    if discard is not None and discard[0] - skip < starts[-1] + int(_LOOKAHEAD_S * rate):
        return None  # a tag that counts fewer frames than the file has: FFmpeg trims mid-file
    period = _RESAMPLER_PERIOD[rate]
    pieces = []
    for i, start in enumerate(starts):
        resample_from = max(0, (start - int(_RESAMPLER_PREROLL_S * rate)) // period * period)
        first_frame = (resample_from + skip) // spf - _DECODER_PREROLL_FRAMES
        # A demuxer started at a frame that reads like a Xing/Info/VBRI tag would take it for
        # one (and drop it, and trim the start): the frame before is taken instead.
        while first_frame > 0 and _looks_like_tag(data, int(frames[first_frame]), int(frames[first_frame + 1])):
            first_frame -= 1
        if resample_from == 0 or first_frame <= 0:
            resample_from, first_frame = 0, 0
        pieces.append(Piece(
            path=os.path.abspath(path), rate=rate, channels=channels, split=split, spf=spf, skip=skip,
            first_frame=first_frame, first_byte=int(frames[first_frame]) if first_frame else 0,
            resample_from=resample_from, keep_from=start,
            keep_to=starts[i + 1] if i + 1 < len(starts) else None, discard=discard,
        ))  # fmt: skip
    return PiecePlan(tuple(pieces), rate, channels, duration_s)


def _start(container: Any, stream: Any) -> tuple[int, int, int]:
    """(byte offset of the first audio frame, samples FFmpeg trims from the start, samples per
    frame), read from FFmpeg's own demuxing and decoding of the first frames."""
    packets = container.demux(stream)
    first = next(packets)
    first_byte = first.pos
    spf = 0
    out = 0
    for packet in [first, *(next(packets) for _ in range(7))]:
        decoded = packet.decode()
        out += sum(f.samples for f in decoded)
        spf = max([spf, *(f.samples for f in decoded)])
    if spf not in (576, 1152) or first_byte is None or first_byte < 0:
        raise ValueError("not an mp3 of Layer III frames")
    skip = 8 * spf - out
    if not 0 <= skip < 7 * spf:
        raise ValueError("an unexpected start")
    return int(first_byte), skip, spf


def _frame_index(data: np.ndarray, first_byte: int, rate: int, spf: int) -> np.ndarray | None:
    """Byte offsets of the Layer III frames that chain from `first_byte` (each starts where the
    one before ends, with the first's version, rate and channel mode), or None when the first is
    not one. Vectorised: ~0.3 s an hour of 128 kbps mp3 on a slow core, the walk along the chain
    included."""
    if len(data) < first_byte + 4:
        return None
    chunk = 1 << 22  # the scan's temporaries stay a few MB whatever the file's size
    found = []
    for at in range(first_byte, len(data) - 3, chunk):
        part = np.asarray(data[at : min(at + chunk, len(data) - 3) + 1])
        syncs = np.flatnonzero(part[:-1] == 0xFF)
        found.append(syncs[part[syncs + 1] & 0xE0 == 0xE0] + at)
    pos = np.concatenate(found)
    pos = pos[pos + 3 < len(data)]
    if not len(pos) or pos[0] != first_byte:
        return None
    h1 = data[pos + 1].astype(np.int64)
    h2 = data[pos + 2].astype(np.int64)
    mono = data[pos + 3] >> 6 == 3
    version, layer, bitrate, rate_index, padding = (h1 >> 3) & 3, (h1 >> 1) & 3, h2 >> 4, (h2 >> 2) & 3, (h2 >> 1) & 1
    if int(layer[0]) != 1 or int(version[0]) == 1 or int(rate_index[0]) == 3:
        return None
    if _RATES[int(version[0])][int(rate_index[0])] != rate or (1152 if version[0] == 3 else 576) != spf:
        return None
    same = ((h1 & 0xFE) == (h1[0] & 0xFE)) & ((h2 & 0x0C) == (h2[0] & 0x0C)) & (mono == mono[0])
    same &= (bitrate != 0) & (bitrate != 15)  # free-format frames have no length in their header
    pos, bitrate, padding = pos[same], bitrate[same], padding[same]
    kbps = (_BITRATES_V1 if version[0] == 3 else _BITRATES_V2)[bitrate]
    ends = pos + (144000 if version[0] == 3 else 72000) * kbps // rate + padding
    following = np.searchsorted(pos, ends)
    following[following >= len(pos)] = len(pos) - 1
    chained = np.where(pos[following] == ends, following, -1).tolist()
    walk = []
    i = 0
    while i >= 0:
        walk.append(i)
        i = chained[i]
    return pos[walk]


def _looks_like_tag(data: np.ndarray, start: int, end: int) -> bool:
    frame = bytes(data[start:end])
    return any(magic in frame for magic in (b"Xing", b"Info", b"VBRI"))


def _end_trimming(raw: bytes, spf: int) -> tuple[int, int] | None:
    """FFmpeg's end trimming from the Xing/Info frame's LAME, Lavf or Lavc tag before the first
    audio frame (libavformat/mp3dec.c, mp3_parse_info_tag): frame k's samples k * spf ... are
    dropped from `first` up to `last`, counted before the start trimming. None: no trimming."""
    if raw[:3] == b"ID3" and len(raw) >= 10:  # the tag is searched after an ID3v2 tag's text
        size = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(raw[6:10]))
        raw = raw[size + (10 if raw[5] & 0x10 else 0) :]
    at = max(raw.rfind(b"Xing"), raw.rfind(b"Info"))
    if at < 0:
        return None
    flags = int.from_bytes(raw[at + 4 : at + 8], "big")
    cursor = at + 8
    frames = 0
    if flags & 1:
        frames = int.from_bytes(raw[cursor : cursor + 4], "big")
        cursor += 4
    cursor += (4 if flags & 2 else 0) + (100 if flags & 4 else 0) + (4 if flags & 8 else 0)
    version = raw[cursor : cursor + 4]
    delays = raw[cursor + 21 : cursor + 24]  # after the version (9 bytes) and 12 of tag fields
    if version not in (b"LAME", b"Lavf", b"Lavc") or len(delays) < 3 or not frames:
        return None
    end_pad = int.from_bytes(delays, "big") & 4095
    return frames * spf - end_pad + 528 + 1, frames * spf


def decode_piece(piece: Piece) -> tuple[np.ndarray | None, int]:
    """(the piece's float32 16 kHz samples, source samples it covers), or (None, 0) when the
    piece is not what the plan expects (the stream then decodes sequentially). Run in a decoding
    process."""
    import av

    try:
        if piece.first_frame == 0:
            container = av.open(piece.path)
        else:
            # FFmpeg's subfile protocol: the demuxer starts at the frame, as it would at a file's
            # first frame, without a Python callback per read.
            container = av.open(f"subfile,,start,{piece.first_byte},end,0,,:file:{piece.path}", format="mp3")
    except av.error.FFmpegError:
        return None, 0
    try:
        return _decode_piece(container, piece)
    except (av.error.FFmpegError, AudioError, ValueError, TypeError, AttributeError, IndexError):
        return None, 0
    finally:
        container.close()


def _decode_piece(container: Any, piece: Piece) -> tuple[np.ndarray | None, int]:
    import av

    rate, spf = piece.rate, piece.spf
    resampler = (
        None if rate == SAMPLE_RATE
        else soxr.ResampleStream(rate, SAMPLE_RATE, piece.channels if piece.split else 1, dtype="float32",
                                 quality="HQ")
    )  # fmt: skip
    # The piece's first and last outputs counted from the resampler's first: whole numbers, as
    # the piece's bounds and the resampler's start keep the 16 kHz grid.
    base = piece.resample_from * SAMPLE_RATE // rate
    out_from = piece.keep_from * SAMPLE_RATE // rate - base
    out_to = None if piece.keep_to is None else piece.keep_to * SAMPLE_RATE // rate - base
    outputs: list[np.ndarray] = []
    produced = 0
    group_samples = max(spf, int(_GROUP_S * rate))
    group = _FrameGroup(piece.channels, piece.split)
    at = 0  # the position of the group's first sample
    fed_to = 0  # the position after the last sample converted

    def flush(cut: int | None = None) -> None:
        """The group's samples (the first `cut` of them) into the resampler, from
        `resample_from` on; non-finite samples in the kept part are the sequential path's to
        report."""
        nonlocal at, fed_to, produced
        block = group.take()[:cut]
        start, at = at, at + len(block)
        fed_to = at
        if at <= piece.resample_from:
            return
        block = block[max(0, piece.resample_from - start) :]
        start = max(start, piece.resample_from)
        lo = max(piece.keep_from, start) - start
        hi = len(block) if piece.keep_to is None else min(piece.keep_to - start, len(block))
        if hi > lo and not np.isfinite(block[lo:hi]).all():
            raise ValueError("non-finite samples")
        outputs.append(block if resampler is None else resampler.resample_chunk(block, last=False))
        produced += len(outputs[-1])

    whole = piece.first_frame == 0
    started = whole
    frame_number = piece.first_frame
    for packet in container.demux(container.streams.audio[0]):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            return None, 0  # the sequential path skips it, and every later sample moves
        if packet.size == 0:  # the flush: an mp3 decoder holds nothing back
            if frames:
                return None, 0
            continue
        k = frame_number
        frame_number += 1
        if whole:
            # Opened as the sequential path opens it: FFmpeg trims the start itself.
            if k * spf >= piece.skip and (len(frames) != 1 or frames[0].samples != spf):
                return None, 0
            for frame in frames:
                group.add(frame)
        else:
            position = k * spf - piece.skip
            if position + spf <= piece.resample_from:
                continue  # the decoder's preroll: decoded, dropped
            if len(frames) != 1 or frames[0].samples != spf:
                return None, 0
            if not started:  # later samples follow on (after an end trimming too)
                at, started = position, True
            group.add(frames[0])
            if piece.discard is not None:
                first, last = piece.discard
                if (k + 1) * spf >= first and k * spf < last:
                    # FFmpeg's end trimming, which a demuxer started mid-file does not know.
                    flush(group.samples - min((k + 1) * spf - first, spf))
                    continue
        if group.samples >= group_samples:
            flush()
        if out_to is not None and produced >= out_to:
            break
    if group.samples:
        flush()
    if out_to is not None and produced < out_to:
        return None, 0  # the file ended before the plan said
    if out_to is None and resampler is not None and fed_to > piece.resample_from:
        empty = np.zeros((0, piece.channels) if piece.split else 0, np.float32)
        outputs.append(resampler.resample_chunk(empty, last=True))
    samples = np.concatenate(outputs) if outputs else np.zeros(0, np.float32)
    covered = (fed_to if piece.keep_to is None else piece.keep_to) - piece.keep_from
    return np.ascontiguousarray(samples[out_from:out_to], dtype=np.float32), covered


class PieceStream:
    """The pieces of a `PiecePlan` decoded in `pool` and read in order as an `AudioStream`'s
    blocks (`stream`); at most `in_flight` pieces decode or wait at once, plus the one being
    read (`most_in_flight` says how many did)."""

    def __init__(
        self, pool: ProcessPoolExecutor, plan: PiecePlan, in_flight: int, max_duration_s: float | None
    ) -> None:
        self._pool = pool
        self._plan = plan
        self._in_flight = max(1, in_flight)
        self._max_duration_s = max_duration_s
        self._pending: collections.deque[Future] = collections.deque()
        self._next = 0
        self._closed = False
        self.most_in_flight = 0
        """The most pieces submitted and not yet read at one time."""
        self.fell_back = False
        """A piece was not what the plan expected: the rest decoded sequentially here."""
        self.stream = AudioStream(SAMPLE_RATE, plan.duration_s, self._blocks(), self.close, None, plan.channels,
                                  plan.pieces[0].split)  # fmt: skip
        # The first pieces start decoding now, while the reader sets up.
        with contextlib.suppress(Exception):  # a broken pool: the reader decodes here instead
            self._submit()

    def _submit(self) -> None:
        while len(self._pending) < self._in_flight and self._next < len(self._plan.pieces) and not self._closed:
            self._pending.append(self._pool.submit(decode_piece, self._plan.pieces[self._next]))
            self._next += 1
            self.most_in_flight = max(self.most_in_flight, len(self._pending))

    def _blocks(self) -> Iterator[np.ndarray]:
        step = int(BLOCK_S * SAMPLE_RATE)
        limit = None if self._max_duration_s is None else int(self._max_duration_s * self._plan.rate) + 1
        handed_on = 0
        source_total = 0
        if self._next == 0:  # the pool broke before the first piece: this thread decodes
            yield from self._sequential(0)
            return
        while self._pending:
            job = self._pending.popleft()
            try:
                samples, covered = job.result()
            except Exception:  # noqa: BLE001 - a dead process (BrokenProcessPool) or a lost job
                samples, covered = None, 0
            if self._closed:
                return
            if samples is None:
                break
            with contextlib.suppress(Exception):  # a broken pool: the pieces submitted go on
                self._submit()  # the next piece decodes while this one is read
            source_total += covered
            if limit is not None and source_total > limit:
                raise _too_long(self._max_duration_s)
            for at in range(0, len(samples), step):
                yield samples[at : at + step]
            handed_on += len(samples)
        else:
            return
        yield from self._sequential(handed_on)

    def _sequential(self, handed_on: int) -> Iterator[np.ndarray]:
        """The recording decoded in this thread from its start, less the samples already read."""
        self.fell_back = True
        self.close()
        first = self._plan.pieces[0]
        with open_audio(first.path, max_duration_s=self._max_duration_s,
                        channels="split" if first.split else "mix") as stream:  # fmt: skip
            for block in stream.blocks():
                if handed_on >= len(block):
                    handed_on -= len(block)
                    continue
                yield block[handed_on:]
                handed_on = 0

    def close(self) -> None:
        self._closed = True
        while self._pending:
            self._pending.popleft().cancel()


__all__ = ["Piece", "PiecePlan", "PieceStream", "decode_piece", "plan_pieces", "piece_rates"]
