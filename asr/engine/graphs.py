"""The encoder and decoder as CUDA graphs, one per padded batch shape.

The encoder is 50 SANM layers of about 22 small kernels each, the decoder 16 layers of about 25.
Launched one by one from Python, their host cost (module calls, dispatch, launch: tens of
microseconds a kernel) is larger than their GPU time for a single clip and keeps the GPU half idle
even for large batches. A CUDA graph replays a whole network with one launch.

A graph has fixed shapes, so batches are padded to a bucket: rows to 1, 2, 3, 4 or a multiple of
8, frames to a multiple of 16 (about one second), tokens to a multiple of 16. Padding changes no
valid result: attention and the FSMN memories only see each clip's own frames and tokens, as in
the eager path; padded rows, frames and tokens are zeros. funasr's forwards cannot be captured as
they are (they build masks from lengths read back to the host, a sync), so `encode_without_sync`
and `decode_without_sync` are the same computations with masks built on the device and the
attention told that masks are one key prefix per clip.

All graphs share one memory pool: they never run at the same time (the engine's GPU lock), and
each replay's output is consumed, in stream order, before the next replay.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from asr.engine.attention import attach_prefix_mask

log = logging.getLogger(__name__)

FRAME_BUCKET = 16
TOKEN_BUCKET = 16


def _round_up(n: int, step: int) -> int:
    return max(step, -(-n // step) * step)


# Past 64 rows, batches share graphs of 96, 128, 192, ... rows: launch overhead matters little
# there, and a long recording's batches of every size in between would each need a graph.
_LARGE_ROWS = (96, 128, 192, 256, 384, 512, 768, 1024)


def bucket(batch: int, frames: int) -> tuple[int, int]:
    """The padded (rows, frames) shape whose encoder graph serves a batch."""
    if batch <= 4:
        rows = batch
    elif batch <= 64:
        rows = _round_up(batch, 8)
    else:
        rows = next((r for r in _LARGE_ROWS if r >= batch), _round_up(batch, 256))
    return rows, _round_up(frames, FRAME_BUCKET)


class CaptureError(RuntimeError):
    """A network could not be captured (a kernel that is not graph-safe, say); run it eagerly."""


def position_encoding(encoder: Any, like: torch.Tensor) -> torch.Tensor | None:
    """What the encoder's input layer adds to `like`-shaped input ([1, T, D]), or None. funasr
    builds it with a host-to-device copy, which a capture cannot contain, so graphs take it as a
    precomputed input."""
    if encoder.embed is None:
        return None
    return encoder.embed(torch.zeros(1, *like.shape[1:], device=like.device, dtype=like.dtype))


def _prefix_mask(lens: torch.Tensor, width: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    return (torch.arange(width, device=lens.device)[None, :] < lens[:, None]).to(dtype)


def encode_without_sync(
    encoder: Any, xs: torch.Tensor, lens: torch.Tensor, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """funasr's SANMEncoder.forward without host syncs, so it can be captured (see the module
    doc). Every lens[b] must be >= 1; `positions` is `position_encoding(encoder, xs)` (computed
    here if not given). Returns the encoder output [B, T, D]."""
    masks = _prefix_mask(lens, xs.size(1))[:, None, :]
    attach_prefix_mask(masks, lens)
    xs = xs * encoder.output_size() ** 0.5
    if encoder.embed is not None:
        xs = xs + (position_encoding(encoder, xs) if positions is None else positions)
    xs, masks = encoder.encoders0(xs, masks)[:2]
    xs, masks = encoder.encoders(xs, masks)[:2]
    if encoder.normalize_before:
        xs = encoder.after_norm(xs)
    return xs


def decode_without_sync(
    decoder: Any, memory: torch.Tensor, memory_lens: torch.Tensor, embeds: torch.Tensor, token_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """funasr's ParaformerSANMDecoder.forward(return_both=True) without host syncs, followed by
    the argmax: returns (token ids [B, N], hidden states [B, N, D]). Every memory_lens[b] >= 1.
    The masks are funasr's (float32, built by `sequence_mask`)."""
    tgt_mask = _prefix_mask(token_lens, embeds.size(1), torch.float32)[:, :, None]
    memory_mask = _prefix_mask(memory_lens, memory.size(1), torch.float32)[:, None, :]
    attach_prefix_mask(memory_mask, memory_lens)
    x, tgt_mask, memory, memory_mask, _ = decoder.decoders(embeds, tgt_mask, memory, memory_mask)
    if decoder.decoders2 is not None:
        x, tgt_mask, memory, memory_mask, _ = decoder.decoders2(x, tgt_mask, memory, memory_mask)
    x, tgt_mask, memory, memory_mask, _ = decoder.decoders3(x, tgt_mask, memory, memory_mask)
    hidden = decoder.after_norm(x)
    return decoder.output_layer(hidden).argmax(-1), hidden


def supported(encoder: Any, decoder: Any) -> str | None:
    """Why the model's encoder or decoder cannot be captured, or None if both can."""
    from funasr.models.transformer.embedding import SinusoidalPositionEncoder

    if type(encoder).__name__ != "SANMEncoder":
        return f"{type(encoder).__name__} is not a SANM encoder"
    if encoder.embed is not None and not isinstance(encoder.embed, SinusoidalPositionEncoder):
        return f"input layer {type(encoder.embed).__name__} is not supported"
    if len(getattr(encoder, "interctc_layer_idx", [])):
        return "intermediate CTC layers are not supported"
    if type(decoder).__name__ != "ParaformerSANMDecoder":
        return f"{type(decoder).__name__} is not a Paraformer SANM decoder"
    if not decoder.normalize_before or decoder.output_layer is None:
        return "the decoder has no final norm or output layer"
    return None


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]  # static inputs, refilled before each replay
    outputs: tuple[torch.Tensor, ...]  # static outputs, overwritten by each replay
    keep: list[torch.Tensor] = field(default_factory=list)  # read by the graph: must live as long


class _GraphCache:
    """Graphs of one network, by input shape.

    A capture costs 40-600 ms, a replay saves a few milliseconds of launches, so a graph pays
    only for shapes that come back. Admission is by frequency: a shape runs eagerly on its first
    request; later, when the cache is full, it displaces the least recently used graph only if it
    was asked for more often than that graph was replayed. Counts are halved every
    `16 * max_graphs` requests so the cache follows a changing workload. Traffic whose shapes
    never repeat (live partials, many long recordings at once) then runs eagerly instead of
    capturing a graph per batch.
    """

    def __init__(self, name: str, device: torch.device, context: Callable[[], AbstractContextManager[Any]],
                 pool: Any, max_graphs: int) -> None:
        self.name = name
        self.device = device
        self.context = context  # autocast (fp16) or nothing, entered around capture
        self.pool = pool
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple[Any, ...], _Graph] = OrderedDict()
        self.sightings: OrderedDict[tuple[Any, ...], int] = OrderedDict()  # requests per shape
        self.hits: dict[tuple[Any, ...], int] = {}  # replays per cached graph
        self.captures = 0
        self.requests = 0
        self.warmed: set[Any] = set()  # dtypes whose capture has run its warm-up forward

    def replay(
        self,
        key: tuple[Any, ...],
        make_inputs: Callable[[], tuple[list[torch.Tensor], list[torch.Tensor]]],
        forward: Callable[..., Sequence[torch.Tensor]],
        fill: Callable[[list[torch.Tensor]], None],
    ) -> tuple[torch.Tensor, ...] | None:
        """Replay the graph for `key` after `fill` wrote its inputs; a shape's first request gets
        None (the caller runs eagerly), its second captures the graph.

        make_inputs() gives (static inputs, other tensors the graph reads); forward(*inputs, *kept)
        is the captured computation.
        """
        self._age()
        entry = self.graphs.get(key)
        if entry is None:
            seen = self.sightings.pop(key, 0) + 1
            self.sightings[key] = seen
            while len(self.sightings) > 64 * self.max_graphs:
                self.sightings.popitem(last=False)
            if not self._admits(seen):
                return None
            self.captures += 1
            try:
                entry = self._capture(key, make_inputs, forward)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as exc:
                raise CaptureError(f"capturing the {self.name} for shape {key[:-1]} failed: {exc}") from exc
            while len(self.graphs) >= self.max_graphs:
                victim, _ = self.graphs.popitem(last=False)
                self.hits.pop(victim, None)
            self.graphs[key] = entry
            self.hits[key] = 0
        else:
            self.graphs.move_to_end(key)
            self.hits[key] += 1
        fill(entry.inputs)
        entry.graph.replay()
        return entry.outputs

    def _admits(self, seen: int) -> bool:
        """Whether a shape asked for `seen` times earns a graph now."""
        if seen < 2:
            return False
        if len(self.graphs) < self.max_graphs:
            return True
        victim = next(iter(self.graphs))
        return seen > self.hits[victim]

    def _age(self) -> None:
        self.requests += 1
        if self.requests % (16 * self.max_graphs) == 0:
            for key in self.sightings:
                self.sightings[key] //= 2
            for key in self.hits:
                self.hits[key] //= 2

    def _capture(
        self,
        key: tuple[Any, ...],
        make_inputs: Callable[[], tuple[list[torch.Tensor], list[torch.Tensor]]],
        forward: Callable[..., Sequence[torch.Tensor]],
    ) -> _Graph:
        start = time.perf_counter()
        with self.context():
            inputs, keep = make_inputs()
        if key[-1] not in self.warmed:
            # Run once outside capture first: library handles, workspaces and kernels are made
            # lazily. Once per dtype: later shapes reuse them, and a warm-up forward would make a
            # capture cost two forwards instead of one (a fresh long recording meets ~15 shapes).
            current = torch.cuda.current_stream(self.device)
            warm = torch.cuda.Stream(self.device)
            warm.wait_stream(current)
            with torch.cuda.stream(warm), self.context():
                forward(*inputs, *keep)
            current.wait_stream(warm)
            self.warmed.add(key[-1])
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads may allocate pinned memory or wait on events meanwhile.
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"), self.context():
            outputs = tuple(forward(*inputs, *keep))
        log.info("%s graph captured for shape %s in %.0f ms (%d cached)", self.name, key[:-1],
                 (time.perf_counter() - start) * 1000, len(self.graphs) + 1)
        return _Graph(graph, inputs, outputs, keep)


class GraphedModel:
    """A Paraformer's encoder and decoder through cached CUDA graphs (call under the GPU lock)."""

    def __init__(self, model: Any, device: torch.device, context: Callable[[], AbstractContextManager[Any]],
                 max_graphs: int = 64) -> None:
        reason = supported(model.encoder, model.decoder)
        if reason:
            raise ValueError(f"the model cannot run as CUDA graphs: {reason}")
        self.encoder = model.encoder
        self.decoder = model.decoder
        self.device = device
        pool = torch.cuda.graph_pool_handle()
        self.encoders = _GraphCache("encoder", device, context, pool, max_graphs)
        self.decoders = _GraphCache("decoder", device, context, pool, max_graphs)

    def encode(self, feats: torch.Tensor, lens: torch.Tensor) -> torch.Tensor | None:
        """Encoder output [B, T, D] for features [B, T, F] and lengths [B] (a view of the graph's
        output: valid until the next replay), or None: run this shape eagerly (first seen)."""
        batch, frames, dim = feats.shape
        rows, padded = bucket(batch, frames)

        def make_inputs() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            x = torch.zeros(rows, padded, dim, device=self.device, dtype=feats.dtype)
            x_lens = torch.full((rows,), padded, device=self.device, dtype=torch.int64)
            positions = position_encoding(self.encoder, x)
            return [x, x_lens], [] if positions is None else [positions]

        def fill(inputs: list[torch.Tensor]) -> None:
            x, x_lens = inputs
            x[:batch, :frames].copy_(feats)
            x[:batch, frames:].zero_()
            x[batch:].zero_()
            x_lens[:batch].copy_(lens)
            x_lens[batch:].fill_(1)

        def forward(x: torch.Tensor, x_lens: torch.Tensor, *positions: torch.Tensor) -> tuple[torch.Tensor]:
            return (encode_without_sync(self.encoder, x, x_lens, positions[0] if positions else None),)

        replayed = self.encoders.replay((rows, padded, feats.dtype), make_inputs, forward, fill)
        if replayed is None:
            return None
        return replayed[0][:batch, :frames]

    def decode(
        self, memory: torch.Tensor, memory_lens: torch.Tensor, embeds: torch.Tensor, token_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(token ids [B, N], decoder hidden states [B, N, D]); views valid until the next replay.
        None: run this shape eagerly (first seen)."""
        batch, frames, dim = memory.shape
        tokens = embeds.size(1)
        rows, padded = bucket(batch, frames)
        padded_tokens = _round_up(tokens, TOKEN_BUCKET)

        def make_inputs() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            mem = torch.zeros(rows, padded, dim, device=self.device, dtype=memory.dtype)
            mem_lens = torch.ones(rows, device=self.device, dtype=torch.int64)
            emb = torch.zeros(rows, padded_tokens, embeds.size(2), device=self.device, dtype=embeds.dtype)
            tok_lens = torch.zeros(rows, device=self.device, dtype=torch.int64)
            return [mem, mem_lens, emb, tok_lens], []

        def fill(inputs: list[torch.Tensor]) -> None:
            mem, mem_lens, emb, tok_lens = inputs
            mem[:batch, :frames].copy_(memory)
            mem[:batch, frames:].zero_()
            mem[batch:].zero_()
            mem_lens[:batch].copy_(memory_lens)
            mem_lens[batch:].fill_(1)
            emb[:batch, :tokens].copy_(embeds)
            emb[:batch, tokens:].zero_()
            emb[batch:].zero_()
            tok_lens[:batch].copy_(token_lens)
            tok_lens[batch:].zero_()

        def forward(*inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return decode_without_sync(self.decoder, *inputs)

        key = (rows, padded, padded_tokens, memory.dtype)
        replayed = self.decoders.replay(key, make_inputs, forward, fill)
        if replayed is None:
            return None
        ids, hidden = replayed
        return ids[:batch, :tokens], hidden[:batch, :tokens]
