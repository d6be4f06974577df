"""Who spoke when: CAM++ speaker embeddings over short windows, clustered per recording.

The approach is FunASR's own diarisation (AutoModel with `spk_model="cam++"`): every VAD segment
is cut into 1.5 s windows with a 0.75 s shift, each window gets a CAM++ embedding (funasr's
`CAMPPlus` class and feature extraction), the windows of one recording are clustered, and each
sentence takes the speaker that owns most of its time.

Clustering is average-linkage agglomerative clustering on cosine distance, written with numpy
(a few dozen lines, so no scikit-learn dependency): it stops at the requested number of
speakers, or, when the number is not given, once the closest two groups are further apart than
`threshold`. Recordings with more windows than `max_points` (about ten minutes of speech) are
first reduced with a few rounds of k-means, so time and memory stay bounded for hours of audio.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr.errors import ModelLoadError, SpeakerOptionsError

SAMPLE_RATE = 16000



@dataclass(frozen=True)
class SpeakerOptions:
    """How speakers are found in one recording."""

    # Exact number of speakers; None estimates it (up to `max_speakers`).
    n_speakers: int | None = None
    max_speakers: int = 8
    # Cosine distance at which two groups count as different speakers (estimation only).
    threshold: float = 0.5
    # CAM++ window and hop, as in funasr's sv_chunk.
    window_s: float = 1.5
    shift_s: float = 0.75
    # Windows clustered one by one; more are first reduced to this many k-means centroids.
    max_points: int = 800

    def __post_init__(self) -> None:
        if self.n_speakers is not None and self.n_speakers < 1:
            raise SpeakerOptionsError("The number of speakers must be at least 1.")
        if self.max_speakers < 1:
            raise SpeakerOptionsError("max_speakers must be at least 1.")
        if not 0 < self.shift_s <= self.window_s:
            raise SpeakerOptionsError("shift_s must be positive and at most window_s.")
        if self.max_points < 2:
            raise SpeakerOptionsError("max_points must be at least 2.")


@dataclass(frozen=True)
class SpeakerWindow:
    """The part of the timeline a window speaks for (ms), not the whole window it heard."""

    start_ms: int
    end_ms: int


def windows(
    audio: np.ndarray, start_sample: int, opts: SpeakerOptions
) -> tuple[list[SpeakerWindow], list[np.ndarray]]:
    """Cut one segment into fixed-length windows (the last one zero-padded, as funasr does).

    Overlapping windows split the overlap at its middle, so the returned spans tile the segment.
    """
    win = int(opts.window_s * SAMPLE_RATE)
    hop = int(opts.shift_s * SAMPLE_RATE)
    n = len(audio)
    starts = list(range(0, max(n - win, 0) + 1, hop))
    if starts[-1] + win < n:
        starts.append(n - win)
    clips, spans = [], []
    for k, s in enumerate(starts):
        clip = audio[s : s + win]
        if len(clip) < win:
            clip = np.pad(clip, (0, win - len(clip)))
        clips.append(clip.astype(np.float32, copy=False))
        own_start = 0 if k == 0 else (s + starts[k - 1] + win) // 2
        own_end = n if k == len(starts) - 1 else (min(s + win, n) + starts[k + 1]) // 2
        spans.append(
            SpeakerWindow((start_sample + own_start) * 1000 // SAMPLE_RATE,
                          (start_sample + max(own_end, own_start)) * 1000 // SAMPLE_RATE)
        )
    return spans, clips


def _weights_file(model_dir: Path) -> Path:
    meta = model_dir / "configuration.json"
    if meta.is_file():
        try:
            name = json.loads(meta.read_text(encoding="utf-8"))["file_path_metas"]["init_param"]
            if (model_dir / name).is_file():
                return model_dir / name
        except (KeyError, TypeError, json.JSONDecodeError):
            pass
    for name in ("model.pt", "campplus_cn_common.bin"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise ModelLoadError(f"The speaker model at {model_dir} has no weights (model.pt).")


class SpeakerEmbedder:
    """A CAM++ model (funasr's `CAMPPlus`) loaded from a funasr-format directory.

    Thread-safe: inference holds no per-request state.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", batch_size: int = 64) -> None:
        from asr.engine.model import read_model_config

        model_dir = Path(model_dir)
        conf = read_model_config(model_dir, "CAMPPlus", "CAM++ speaker")
        weights = _weights_file(model_dir)
        try:
            import torch

            from asr.engine.model import funasr_registry

            tables = funasr_registry({"model": "CAMPPlus"})
            from funasr.models.campplus.utils import extract_feature

            model_cls = tables.model_classes.get("CAMPPlus")
            if model_cls is None:
                raise ModelLoadError("funasr could not register CAMPPlus.")
            self._model = model_cls(**(conf.get("model_conf") or {}))
            state = torch.load(weights, map_location="cpu", weights_only=True)
            self._model.load_state_dict(state, strict=True)
            self._model.eval().to(device)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"The speaker model at {model_dir} could not be loaded: {exc}") from exc
        self._torch = torch
        self._features = extract_feature
        self._device = device
        self.batch_size = batch_size
        self.model_dir = model_dir

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised embeddings, one row per clip (equal-length clips batch without padding)."""
        torch = self._torch
        out = []
        for pos in range(0, len(clips), self.batch_size):
            batch = [torch.from_numpy(np.asarray(c, dtype=np.float32)) for c in clips[pos : pos + self.batch_size]]
            feats, _, _ = self._features(batch)
            with torch.inference_mode():
                emb = self._model(feats.to(self._device, torch.float32)).float().cpu().numpy()
            out.append(emb)
        if not out:
            return np.zeros((0, 1), np.float32)
        emb = np.concatenate(out)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-8)


def _kmeans(x: np.ndarray, k: int, iters: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (deterministic: starts from points spread evenly over time)."""
    centres = x[np.linspace(0, len(x) - 1, k).astype(int)].copy()
    labels = np.zeros(len(x), dtype=int)
    for _ in range(iters):
        labels = np.argmax(x @ centres.T, axis=1)
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c = members.sum(axis=0)
                centres[j] = c / max(np.linalg.norm(c), 1e-8)
    return centres, labels


def _agglomerate(x: np.ndarray, weights: np.ndarray, n_clusters: int | None, max_clusters: int,
                 threshold: float) -> np.ndarray:
    """Average-linkage clustering on cosine distance (Lance-Williams updates); labels per row."""
    n = len(x)
    dist = 1.0 - np.clip(x @ x.T, -1.0, 1.0)
    np.fill_diagonal(dist, np.inf)
    size = weights.astype(np.float64).copy()
    members = [[i] for i in range(n)]
    alive = n
    while alive > 1:
        flat = int(np.argmin(dist))
        a, b = divmod(flat, n)
        closest = dist[a, b]
        if n_clusters is not None:
            if alive <= n_clusters:
                break
        elif closest > threshold and alive <= max_clusters:
            break
        # Merge b into a: the new distance is the size-weighted mean of both (average linkage).
        merged = (size[a] * dist[a] + size[b] * dist[b]) / (size[a] + size[b])
        dist[a] = merged
        dist[:, a] = merged
        dist[a, a] = np.inf
        dist[b] = np.inf
        dist[:, b] = np.inf
        size[a] += size[b]
        members[a] += members[b]
        members[b] = []
        alive -= 1
    labels = np.zeros(n, dtype=int)
    for label, group in enumerate(g for g in members if g):
        labels[group] = label
    return labels


def cluster_speakers(embeddings: np.ndarray, opts: SpeakerOptions | None = None) -> np.ndarray:
    """A speaker number per embedding row (time order), numbered in order of first appearance."""
    opts = opts or SpeakerOptions()
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=int)
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-8)
    if n > opts.max_points:
        centres, assign = _kmeans(x, opts.max_points)
        weights = np.bincount(assign, minlength=len(centres))
        keep = weights > 0
        remap = np.cumsum(keep) - 1
        centre_labels = _agglomerate(centres[keep], weights[keep], opts.n_speakers,
                                     opts.max_speakers, opts.threshold)
        raw = centre_labels[remap[assign]]
    else:
        raw = _agglomerate(x, np.ones(n), opts.n_speakers, opts.max_speakers, opts.threshold)
    order: dict[int, int] = {}
    for r in raw.tolist():
        order.setdefault(r, len(order))
    return np.array([order[r] for r in raw.tolist()], dtype=int)


def speaker_name(label: int) -> str:
    """The label shown to users: S1, S2, ..."""
    return f"S{label + 1}"


def majority_speaker(start_ms: int, end_ms: int, spans: Sequence[SpeakerWindow],
                     labels: Sequence[int]) -> int | None:
    """The label owning most of [start_ms, end_ms]; the nearest window when none overlaps."""
    if not spans:
        return None
    share: dict[int, int] = {}
    for span, label in zip(spans, labels):
        overlap = min(end_ms, span.end_ms) - max(start_ms, span.start_ms)
        if overlap > 0:
            share[label] = share.get(label, 0) + overlap
    if share:
        return max(share, key=lambda k: share[k])
    mid = (start_ms + end_ms) / 2
    nearest = min(range(len(spans)), key=lambda i: abs((spans[i].start_ms + spans[i].end_ms) / 2 - mid))
    return int(labels[nearest])


def make_campplus_dir(path: str | Path, seed: int = 0, small: bool = True) -> Path:
    """Write a CAM++ dir in funasr's format with seeded random weights (for tests, benchmarks).

    `small` narrows the network (the released one has 7M parameters) so tests run quickly; the
    block structure is the same. Random weights do not tell speakers apart.
    """
    import torch
    import yaml

    from asr.engine.model import funasr_registry

    tables = funasr_registry({"model": "CAMPPlus"})

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model_conf: dict[str, Any] = {"feat_dim": 80, "embedding_size": 192}
    if small:
        model_conf.update(embedding_size=32, growth_rate=8, bn_size=2, init_channels=32)
    torch.manual_seed(seed)
    model = tables.model_classes.get("CAMPPlus")(**model_conf)
    model.eval()
    torch.save(model.state_dict(), out / "model.pt")
    conf = {"model": "CAMPPlus", "model_conf": model_conf}
    (out / "config.yaml").write_text(yaml.safe_dump(conf), encoding="utf-8")
    return out
