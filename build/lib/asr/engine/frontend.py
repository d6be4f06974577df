"""Batched Kaldi fbank + LFR + CMVN in torch, on whatever device the audio lives on.

funasr's ``WavFrontend`` extracts features clip by clip on the CPU (kaldi-native-fbank or
torchaudio) and then stacks them. ``BatchFrontend`` computes the same features for a padded batch
in a few tensor operations, so on a GPU the frontend costs next to nothing and audio is copied to
the device once as raw samples.

Kaldi's recipe as funasr configures it: samples scaled to the int16 range, frames of 25 ms every
10 ms with ``snip_edges`` (only whole frames), DC offset removed per frame, pre-emphasis 0.97,
window, zero-padded FFT to a power of two, power spectrum, triangular mel banks on the mel scale
``1127 ln(1 + f / 700)`` between 20 Hz and Nyquist, log with a floor of float32 epsilon. Then low
frame rate stacking (LFR) and the model's CMVN from ``am.mvn``.

Each clip's frames read only its own samples, and LFR repeats each clip's own last frame, so the
padding of a batch never changes a clip's features. Clips shorter than one frame (25 ms) get no
features (funasr fails on them); the engine rejects such clips before they get here.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["BatchFrontend", "FrontendOptions", "load_cmvn"]

# Kaldi floors mel energies at float32 epsilon before the log.
_LOG_FLOOR = float(np.finfo(np.float32).eps)
_WINDOWS = ("hamming", "hanning", "povey", "rectangular", "sine", "blackman")


@dataclass(frozen=True)
class FrontendOptions:
    """The ``frontend_conf`` of a funasr ``WavFrontend`` model config."""

    fs: int = 16000
    window: str = "hamming"
    n_mels: int = 80
    frame_length: float = 25.0  # milliseconds
    frame_shift: float = 10.0  # milliseconds
    lfr_m: int = 1
    lfr_n: int = 1
    # Inference uses no dither; funasr's random dither cannot be reproduced and is refused.
    dither: float = 0.0
    snip_edges: bool = True
    # funasr scales float samples in [-1, 1] to the int16 range before fbank (misspelt there).
    upsacle_samples: bool = True

    def __post_init__(self) -> None:
        if self.window not in _WINDOWS:
            raise ValueError(f"window must be one of {_WINDOWS}, got {self.window!r}")
        if self.dither != 0.0:
            raise ValueError("dither must be 0 for inference; random dither is not supported")
        if not self.snip_edges:
            raise ValueError("only snip_edges=True (funasr's default) is supported")
        if self.lfr_m < 1 or self.lfr_n < 1 or self.n_mels < 1:
            raise ValueError("lfr_m, lfr_n and n_mels must be positive")

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> FrontendOptions:
        """Options from a funasr ``frontend_conf`` mapping; keys this frontend ignores
        (such as ``cmvn_file``) are skipped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in conf.items() if k in known})

    @property
    def window_size(self) -> int:
        return int(self.fs * self.frame_length * 0.001)

    @property
    def window_shift(self) -> int:
        return int(self.fs * self.frame_shift * 0.001)

    @property
    def fft_size(self) -> int:
        return 1 << (self.window_size - 1).bit_length()


def load_cmvn(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a Kaldi nnet ``am.mvn``: returns float32 [2, dim] = (shift, scale), applied as
    ``(x + shift) * scale`` (``<AddShift>`` holds minus the mean, ``<Rescale>`` 1 / std)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()

    def block(tag: str) -> np.ndarray:
        match = re.search(re.escape(tag) + r"[^\[]*\[([^\]]*)\]", text)
        if match is None:
            raise ValueError(f"{os.fspath(path)} has no {tag} block")
        return np.array(match.group(1).split(), dtype=np.float32)

    shift, scale = block("<AddShift>"), block("<Rescale>")
    if shift.shape != scale.shape:
        raise ValueError(f"{os.fspath(path)}: <AddShift> and <Rescale> sizes differ")
    return np.stack([shift, scale])


def _window(kind: str, size: int) -> torch.Tensor:
    i = torch.arange(size, dtype=torch.float64)
    a = 2 * math.pi / (size - 1) if size > 1 else 0.0
    if kind == "hanning":
        w = 0.5 - 0.5 * torch.cos(a * i)
    elif kind == "sine":
        w = torch.sin(0.5 * a * i)
    elif kind == "hamming":
        w = 0.54 - 0.46 * torch.cos(a * i)
    elif kind == "povey":
        w = (0.5 - 0.5 * torch.cos(a * i)).pow(0.85)
    elif kind == "blackman":
        w = 0.42 - 0.5 * torch.cos(a * i) + 0.08 * torch.cos(2 * a * i)
    else:
        w = torch.ones(size, dtype=torch.float64)
    return w.to(torch.float32)


def _mel_banks(n_mels: int, fft_size: int, fs: float, low: float = 20.0, high: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters as a [fft_size // 2 + 1, n_mels] matrix (Nyquist row 0)."""
    nyquist = 0.5 * fs
    high = nyquist + high if high <= 0.0 else high

    def mel(f: torch.Tensor | float) -> torch.Tensor:
        return 1127.0 * torch.log1p(torch.as_tensor(f, dtype=torch.float64) / 700.0)

    n_bins = fft_size // 2
    mel_low, mel_high = mel(low), mel(high)
    delta = (mel_high - mel_low) / (n_mels + 1)
    left = mel_low + torch.arange(n_mels, dtype=torch.float64)[:, None] * delta
    center, right = left + delta, left + 2 * delta
    freq_mel = mel(fs / fft_size * torch.arange(n_bins, dtype=torch.float64))[None, :]
    up = (freq_mel - left) / (center - left)
    down = (right - freq_mel) / (right - center)
    weights = torch.where(freq_mel <= center, up, down)
    weights = torch.where((freq_mel > left) & (freq_mel < right), weights, 0.0)
    banks = torch.zeros(n_bins + 1, n_mels, dtype=torch.float64)
    banks[:n_bins] = weights.T
    return banks.to(torch.float32)


class BatchFrontend(nn.Module):
    """fbank + LFR + CMVN for a padded batch of 16 kHz float waveforms, equal to funasr's
    ``WavFrontend`` per clip. Runs on the device of its buffers (move it with ``.to()``)."""

    def __init__(self, options: FrontendOptions, cmvn: np.ndarray | torch.Tensor | None = None):
        super().__init__()
        self.options = options
        self.register_buffer("window", _window(options.window, options.window_size), persistent=False)
        self.register_buffer(
            "mel_banks", _mel_banks(options.n_mels, options.fft_size, options.fs), persistent=False
        )
        dim = options.n_mels * options.lfr_m
        if cmvn is not None:
            cmvn = torch.as_tensor(np.asarray(cmvn), dtype=torch.float32)
            if cmvn.dim() != 2 or cmvn.size(0) != 2 or cmvn.size(1) < dim:
                raise ValueError(f"cmvn must be [2, {dim}] (shift, scale), got {tuple(cmvn.shape)}")
            cmvn = cmvn[:, :dim].clone()
        self.register_buffer("cmvn", cmvn, persistent=False)

    @classmethod
    def from_model_dir(cls, conf: Mapping[str, Any], mvn_path: str | os.PathLike[str]) -> BatchFrontend:
        """Build from a model config's ``frontend_conf`` and its ``am.mvn``."""
        return cls(FrontendOptions.from_conf(conf), load_cmvn(mvn_path))

    def output_size(self) -> int:
        return self.options.n_mels * self.options.lfr_m

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames per clip for clips of ``lengths`` samples."""
        opts = self.options
        fbank = torch.where(
            lengths >= opts.window_size,
            torch.div(lengths - opts.window_size, opts.window_shift, rounding_mode="floor") + 1,
            0,
        )
        return torch.div(fbank + opts.lfr_n - 1, opts.lfr_n, rounding_mode="floor")

    def fbank(self, waves: torch.Tensor) -> torch.Tensor:
        """Log-mel fbank of every whole frame of a [B, T] batch: [B, frames, n_mels] float32."""
        opts = self.options
        dtype = torch.float64 if waves.dtype == torch.float64 else torch.float32
        x = waves.to(dtype)
        if opts.upsacle_samples:
            x = x * 32768.0
        if x.size(1) < opts.window_size:
            return x.new_zeros(x.size(0), 0, opts.n_mels)
        frames = x.unfold(1, opts.window_size, opts.window_shift)  # [B, F, window] view
        frames = frames - frames.mean(dim=-1, keepdim=True)
        # Pre-emphasis as Kaldi does it: the first sample is scaled by (1 - coeff) in place.
        frames = torch.cat(
            [frames[..., :1] * (1.0 - 0.97), frames[..., 1:] - 0.97 * frames[..., :-1]], dim=-1
        )
        frames = frames * self.window.to(dtype)
        spectrum = torch.fft.rfft(frames, n=opts.fft_size)
        power = spectrum.real.square() + spectrum.imag.square()
        mel = torch.matmul(power, self.mel_banks.to(dtype))
        return mel.clamp_(min=_LOG_FLOOR).log_().to(torch.float32)

    def forward(
        self, waves: torch.Tensor, lengths: torch.Tensor | Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features for a padded batch.

        Args:
            waves: [B, T] float samples in [-1, 1], padded after each clip's end.
            lengths: [B] valid samples per clip.

        Returns:
            (feats [B, T', n_mels * lfr_m] float32 with zeros past each clip's end,
            feat_lengths [B] int64). ``T'`` follows from ``T`` (no host sync), so it equals
            ``feat_lengths.max()`` when the longest clip fills the batch.
        """
        if waves.dim() != 2:
            raise ValueError(f"waves must be [batch, samples], got shape {tuple(waves.shape)}")
        opts = self.options
        lengths = torch.as_tensor(lengths, device=waves.device).to(torch.int64)
        feats = self.fbank(waves)  # [B, F, n_mels]
        batch, n_fbank, n_mels = feats.shape
        fbank_lens = torch.where(
            lengths >= opts.window_size,
            torch.div(lengths - opts.window_size, opts.window_shift, rounding_mode="floor") + 1,
            0,
        ).clamp_(max=n_fbank)
        out_lens = torch.div(fbank_lens + opts.lfr_n - 1, opts.lfr_n, rounding_mode="floor")
        n_out = -(-n_fbank // opts.lfr_n)

        if opts.lfr_m != 1 or opts.lfr_n != 1:
            # LFR row j stacks frames lfr_n*j - (lfr_m-1)//2 ... + lfr_m - 1, clamped to the clip:
            # funasr pads with copies of the first frame on the left and the last on the right.
            offsets = torch.arange(opts.lfr_m, device=waves.device) - (opts.lfr_m - 1) // 2
            rows = torch.arange(n_out, device=waves.device)[:, None] * opts.lfr_n + offsets
            last = (fbank_lens - 1).clamp_(min=0)[:, None, None]
            index = torch.minimum(rows.clamp(min=0)[None], last)  # [B, n_out, lfr_m]
            feats = torch.gather(feats, 1, index.reshape(batch, -1, 1).expand(-1, -1, n_mels)).reshape(
                batch, n_out, opts.lfr_m * n_mels
            )
        if self.cmvn is not None:
            feats = (feats + self.cmvn[0]) * self.cmvn[1]
        valid = torch.arange(n_out, device=waves.device)[None, :] < out_lens[:, None]
        feats = torch.where(valid[..., None], feats, 0.0)
        return feats, out_lens
