"""From the network's output to `Transcript`s: results leave the GPU through reusable pinned
buffers without a host sync, and become text and per-token times (funasr's rules where the
tokens are not all CJK characters).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from asr.engine.timestamps import fire_mask, token_spans
from asr.pipeline.audio import SAMPLE_RATE

_UPSAMPLE = 3  # CifPredictorV3's timestamp head runs at three times the encoder frame rate


@dataclass(frozen=True)
class Transcript:
    """What the engine returns for one input."""

    text: str
    """CJK characters without spaces, English words separated by one space."""
    tokens: list[str]
    """Units of `text` that `timestamps` refers to (characters, or whole English words)."""
    token_ids: list[int]
    """Raw vocabulary ids the decoder chose (before BPE pieces are joined)."""
    timestamps: list[tuple[int, int]]
    """[start_ms, end_ms] per entry of `tokens`, relative to the start of the clip."""
    duration_s: float
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tokens": self.tokens,
            "timestamps": [list(t) for t in self.timestamps],
            "duration_s": round(self.duration_s, 3),
            "timings": self.timings,
        }


class Staging(threading.local):
    """Per-thread reusable host buffers for copies to and from the GPU.

    Copies are asynchronous only from page-locked memory (from pageable memory a copy waits for
    all work queued on the GPU, which is the other batch's), and pinning fresh memory
    (cudaHostAlloc) took 50-100 ms per large batch on the benchmark machine. One thread has one
    batch in flight at a time, and reads its results before it stages the next, so one buffer
    per direction and thread is enough.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def take(
        self, direction: str, shapes: list[tuple[tuple[int, ...], torch.dtype]], pinned: bool
    ) -> list[torch.Tensor]:
        """Tensors of the given shapes and dtypes, carved out of this thread's buffer."""
        sizes = [int(np.prod(shape)) * dtype.itemsize for shape, dtype in shapes]
        offsets = np.cumsum([0] + [-(-n // 64) * 64 for n in sizes])  # 64-byte aligned parts
        buffer = self.buffers.get(direction)
        if buffer is None or buffer.numel() < offsets[-1]:
            size = 1 << max(20, int(offsets[-1] - 1).bit_length())
            buffer = torch.empty(size, dtype=torch.uint8, pin_memory=pinned)
            self.buffers[direction] = buffer
        return [buffer[int(o) : int(o) + n].view(dtype).view(shape)
                for (shape, dtype), o, n in zip(shapes, offsets[:-1], sizes, strict=True)]


@dataclass
class HostResults:
    """A batch's results on their way to the host (see `ResultReader.copy`)."""

    tensors: dict[str, torch.Tensor]
    event: torch.cuda.Event | None

    def ready(self) -> None:
        if self.event is not None:
            self.event.synchronize()


class ResultReader:
    """Copies a batch's results to the host and turns them into `Transcript`s."""

    def __init__(
        self, token_list: Sequence[str], sos: int, eos: int, blank: int, device: torch.device
    ) -> None:
        self.token_list = token_list
        self.sos, self.eos, self.blank = sos, eos, blank
        self.device = device
        self.pinned = device.type == "cuda"  # staging buffers are page-locked on a GPU box
        self._staging = Staging()

    def staging(self) -> Staging:
        """This reader's per-thread staging buffers (the engine stages its input audio there)."""
        return self._staging

    def copy(self, out: dict[str, torch.Tensor]) -> HostResults:
        """Start copying what the text needs to the host, without waiting for the GPU."""
        ids = out["ids"]
        in_range = torch.arange(ids.shape[1], device=ids.device)[None, :] < out["token_len"][:, None]
        keep = in_range & (ids != self.sos) & (ids != self.eos) & (ids != self.blank)
        frames = out["enc_lens"] * _UPSAMPLE
        fires = fire_mask(out["us_alphas"], out["us_peaks"], frames, keep.sum(-1))
        # Copies into pinned memory that complete in stream order; `ready` waits for them only.
        tensors = {"ids": ids, "keep": keep, "frames": frames, "fires": fires}
        staged = self._staging.take("out", [(tuple(t.shape), t.dtype) for t in tensors.values()], self.pinned)
        host = {}
        for (name, tensor), dst in zip(tensors.items(), staged, strict=True):
            host[name] = dst.copy_(tensor, non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
        return HostResults(host, event)

    def decode(
        self, host: HostResults, audios: list[np.ndarray], timings: dict[str, float]
    ) -> list[Transcript]:
        from funasr.utils.postprocess_utils import sentence_postprocess

        ids_h, keep_h = host.tensors["ids"].numpy(), host.tensors["keep"].numpy()
        frames_h, fires_h = host.tensors["frames"].numpy(), host.tensors["fires"].numpy()
        results = []
        for row, audio in enumerate(audios):
            token_ids = ids_h[row][keep_h[row]].tolist()
            duration = len(audio) / SAMPLE_RATE
            if not token_ids:
                results.append(Transcript("", [], [], [], duration, dict(timings)))
                continue
            pieces = [self.token_list[t] for t in token_ids]
            spans = token_spans(np.flatnonzero(fires_h[row]), int(frames_h[row]), len(pieces))
            if all(_is_cjk_char(p) for p in pieces):
                # The common case, where funasr's postprocess changes nothing: skip its Python.
                words, stamps = pieces, spans
            else:
                # BPE pieces, <unk>, abbreviations: funasr's own rules.
                _, stamps, words = sentence_postprocess(pieces, [list(x) for x in spans])
                words = [w for w in words if w.strip()]
            end_ms = len(audio) * 1000 // SAMPLE_RATE
            results.append(
                Transcript(
                    text=join_tokens(words),
                    tokens=words,
                    token_ids=token_ids,
                    # LFR pads the last frame, so funasr's last end can pass the clip's end.
                    timestamps=[(min(int(s), end_ms), min(int(e), end_ms)) for s, e in stamps],
                    duration_s=duration,
                    timings=dict(timings),
                )
            )
        return results


def stitch(
    audios: Sequence[np.ndarray], owners: list[tuple[int, int]], parts: list[Transcript]
) -> list[Transcript]:
    """One Transcript per input from the transcripts of its pieces (`owners`: input index and
    sample offset per piece), times shifted onto the input's timeline."""
    grouped: dict[int, list[tuple[int, Transcript]]] = {}
    for (i, offset), part in zip(owners, parts):
        grouped.setdefault(i, []).append((offset, part))
    out = []
    for i in range(len(audios)):
        pieces = grouped[i]
        if len(pieces) == 1:
            out.append(pieces[0][1])
            continue
        tokens: list[str] = []
        ids: list[int] = []
        stamps: list[tuple[int, int]] = []
        text = ""
        timings: dict[str, float] = {}
        for offset, part in pieces:
            shift = offset * 1000 // SAMPLE_RATE
            tokens += part.tokens
            ids += part.token_ids
            stamps += [(s + shift, e + shift) for s, e in part.timestamps]
            text = _join_text(text, part.text)
            for k, v in part.timings.items():
                timings[k] = timings.get(k, 0.0) + v
        out.append(Transcript(text, tokens, ids, stamps, len(audios[i]) / SAMPLE_RATE, timings))
    return out


def _is_cjk_char(piece: str) -> bool:
    return len(piece) == 1 and "\u4e00" <= piece <= "\u9fff"


def join_tokens(tokens: Sequence[str]) -> str:
    """Readable text: CJK characters without spaces, English words separated by one space
    (funasr puts a space between every unit when it computes timestamps)."""
    out = ""
    for token in tokens:
        out = _join_text(out, token)
    return out


def _join_text(left: str, right: str) -> str:
    if not left:
        return right
    if not right:
        return left
    if left[-1].isascii() and left[-1].isalnum() and right[0].isascii() and right[0].isalnum():
        return f"{left} {right}"
    return left + right
