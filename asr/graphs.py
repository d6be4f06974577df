"""The encoder as CUDA graphs, one per padded batch shape.

The encoder is 50 SANM layers of about 22 small kernels each. Launched one by one from Python,
their host cost (module calls, dispatch, launch: tens of microseconds a kernel) is larger than
their GPU time for a single clip and keeps the GPU half idle even for large batches. A CUDA graph
replays the whole encoder with one launch.

A graph has fixed shapes, so batches are padded to a bucket: rows to 1, 2, 3, 4 or a multiple of 8,
frames to a multiple of 16 (about one second). Padding changes no valid result: attention and the
FSMN memory only see each clip's own frames, as in the eager path; padded rows and frames are
zeros. funasr's encoder forward cannot be captured as it is (its mask is built on the host from
lengths that live on the GPU, a sync), so `encode_without_sync` is the same computation with the mask built
on the device and the attention told that masks are one key prefix per clip.

All graphs share one memory pool: they never run at the same time (the engine's GPU lock), and
each replay's output is consumed, in stream order, before the next replay.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from .attention import attach_prefix_mask

log = logging.getLogger(__name__)

FRAME_BUCKET = 16


def bucket(batch: int, frames: int) -> tuple[int, int]:
    """The padded (rows, frames) shape whose graph serves a batch."""
    rows = batch if batch <= 4 else -(-batch // 8) * 8
    return rows, -(-frames // FRAME_BUCKET) * FRAME_BUCKET


class CaptureError(RuntimeError):
    """The encoder could not be captured (a kernel that is not graph-safe, say); run it eagerly."""


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    feats: torch.Tensor  # static input [rows, frames, dim]
    lens: torch.Tensor  # static input [rows]
    out: torch.Tensor  # static output [rows, frames, dim]
    positions: torch.Tensor | None  # read by the graph: must live as long as it


def position_encoding(encoder: Any, like: torch.Tensor) -> torch.Tensor | None:
    """What the encoder's input layer adds to `like`-shaped input ([1, T, D]), or None. funasr
    builds it with a host-to-device copy, which a capture cannot contain, so graphs take it as a
    precomputed input."""
    if encoder.embed is None:
        return None
    return encoder.embed(torch.zeros(1, *like.shape[1:], device=like.device, dtype=like.dtype))


def encode_without_sync(
    encoder: Any, xs: torch.Tensor, lens: torch.Tensor, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """funasr's SANMEncoder.forward without host syncs, so it can be captured (see the module
    doc). Every lens[b] must be >= 1; `positions` is `position_encoding(encoder, xs)` (computed
    here if not given). Returns the encoder output [B, T, D]."""
    masks = (torch.arange(xs.size(1), device=xs.device)[None, :] < lens[:, None])[:, None, :]
    attach_prefix_mask(masks, lens)
    xs = xs * encoder.output_size() ** 0.5
    if encoder.embed is not None:
        xs = xs + (position_encoding(encoder, xs) if positions is None else positions)
    xs, masks = encoder.encoders0(xs, masks)[:2]
    xs, masks = encoder.encoders(xs, masks)[:2]
    if encoder.normalize_before:
        xs = encoder.after_norm(xs)
    return xs


def supported(encoder: Any) -> str | None:
    """Why `encoder` cannot be captured, or None if it can."""
    from funasr.models.transformer.embedding import SinusoidalPositionEncoder

    if type(encoder).__name__ != "SANMEncoder":
        return f"{type(encoder).__name__} is not a SANM encoder"
    if encoder.embed is not None and not isinstance(encoder.embed, SinusoidalPositionEncoder):
        return f"input layer {type(encoder.embed).__name__} is not supported"
    if len(getattr(encoder, "interctc_layer_idx", [])):
        return "intermediate CTC layers are not supported"
    return None


class GraphedEncoder:
    """Runs a funasr SANM encoder through cached CUDA graphs (call under the engine's GPU lock)."""

    def __init__(
        self, encoder: Any, device: torch.device, context: Callable[[], AbstractContextManager[Any]],
        max_graphs: int = 64,
    ) -> None:
        reason = supported(encoder)
        if reason:
            raise ValueError(f"the encoder cannot run as CUDA graphs: {reason}")
        self.encoder = encoder
        self.device = device
        self.context = context  # autocast (fp16) or nothing, entered around capture
        self.max_graphs = max_graphs
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: OrderedDict[tuple[int, int, torch.dtype], _Graph] = OrderedDict()

    def __call__(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output [B, T, D] (a view of the graph's output, valid until the next call) and
        lengths, for features [B, T, F] and lengths [B]."""
        batch, frames, _ = feats.shape
        rows, padded = bucket(batch, frames)
        key = (rows, padded, feats.dtype)
        entry = self.graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(rows, padded, feats)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as exc:
                raise CaptureError(f"capturing the encoder for {rows} x {padded} failed: {exc}") from exc
            self.graphs[key] = entry
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        entry.feats[:batch, :frames].copy_(feats)
        entry.feats[:batch, frames:].zero_()
        entry.feats[batch:].zero_()
        entry.lens[:batch].copy_(lens)
        entry.lens[batch:].fill_(1)
        entry.graph.replay()
        return entry.out[:batch, :frames], lens

    def _capture(self, rows: int, frames: int, like: torch.Tensor) -> _Graph:
        feats = torch.zeros(rows, frames, like.size(2), device=self.device, dtype=like.dtype)
        lens = torch.full((rows,), frames, device=self.device, dtype=torch.int64)
        current = torch.cuda.current_stream(self.device)
        # Run once outside capture first (library handles and workspaces are made lazily).
        with self.context():
            positions = position_encoding(self.encoder, feats)
        warm = torch.cuda.Stream(self.device)
        warm.wait_stream(current)
        with torch.cuda.stream(warm), self.context():
            encode_without_sync(self.encoder, feats, lens, positions)
        current.wait_stream(warm)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads may allocate pinned memory or wait on events meanwhile.
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"), self.context():
            out = encode_without_sync(self.encoder, feats, lens, positions)
        log.info("encoder graph captured for %d rows x %d frames (%d cached)", rows, frames, len(self.graphs) + 1)
        return _Graph(graph, feats, lens, out, positions)
