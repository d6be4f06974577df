"""Speech for training and tests: espeak-ng in parallel processes, then resampling, noise and room
reverb in torch (on the GPU during training, on the CPU in tests).

Every utterance gets its own voice: rate, pitch, pitch range and a formant variant drawn from a
seeded generator, so the same (text, seed) always gives the same samples and boundaries.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from espeak import ESPEAK_RATE, VARIANTS, SynthesisError, Voice, shared

SAMPLE_RATE = 16000


def random_voice(rng: random.Random) -> Voice:
    return Voice(
        rate=rng.randint(135, 235),
        pitch=rng.randint(25, 75),
        pitch_range=rng.randint(20, 90),
        variant=rng.choice(VARIANTS),
    )


@dataclass
class SpeechSet:
    """Many utterances at ESPEAK_RATE, concatenated: utterance i is
    audio[offsets[i] : offsets[i] + lengths[i]]; character k of it starts at starts[i][k]
    samples (leading silence included)."""

    chunks: list[np.ndarray]  # int16; concatenated, all utterances back to back
    offsets: np.ndarray  # int64
    lengths: np.ndarray  # int64
    starts: list[np.ndarray]
    speech_end: np.ndarray  # int64, per utterance, relative to its own start
    index: np.ndarray  # int64: which input text each utterance is (failed texts are missing)

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)

    def clip(self, i: int) -> np.ndarray:
        return self.audio[self.offsets[i] : self.offsets[i] + self.lengths[i]]


def _synth_chunk(args: tuple[list[tuple[int, str]], int]) -> tuple[np.ndarray, list[tuple[int, int, list[int], int]]]:
    """Worker: synthesise (index, text) pairs; return their audio back to back and metadata."""
    items, seed = args
    engine = shared()
    parts, meta = [], []
    for index, text in items:
        rng = random.Random(seed * 1_000_003 + index)
        try:
            utt = engine.synth(text, random_voice(rng))
        except SynthesisError:
            continue
        lead = np.zeros(int(rng.uniform(0.05, 0.4) * ESPEAK_RATE), np.int16)
        tail = np.zeros(int(rng.uniform(0.1, 0.5) * ESPEAK_RATE), np.int16)
        clip = np.concatenate([lead, utt.samples, tail])
        parts.append(clip)
        meta.append((index, len(clip), (utt.starts + len(lead)).tolist(), utt.speech_end + len(lead)))
    return (np.concatenate(parts) if parts else np.zeros(0, np.int16)), meta


def synthesize(texts: Sequence[str], seed: int = 0, workers: int | None = None, chunk: int = 256,
               progress: bool = False) -> SpeechSet:
    """All `texts` spoken, in `workers` processes (each with its own libespeak-ng). Audio comes
    back through the pool's pipes (no temporary files: the full corpus is about 30 GB)."""
    # The CPUs this process may use (a container's share), not the host's count.
    workers = workers or len(os.sched_getaffinity(0)) or 1
    items = list(enumerate(texts))
    jobs = [(items[i : i + chunk], seed) for i in range(0, len(items), chunk)]
    results: list[tuple[np.ndarray, list]] = []
    if workers == 1:
        results = [_synth_chunk(j) for j in jobs]
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            for k, res in enumerate(pool.imap(_synth_chunk, jobs)):
                results.append(res)
                if progress and k % max(1, len(jobs) // 10) == 0:
                    print(f"synth {k + 1}/{len(jobs)} chunks", flush=True)
    index, lengths, starts, ends = [], [], [], []
    for _, meta in results:
        for i, n, s, e in meta:
            index.append(i)
            lengths.append(n)
            starts.append(np.asarray(s, np.int64))
            ends.append(e)
    lengths_a = np.asarray(lengths, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths_a)[:-1]]).astype(np.int64)
    return SpeechSet([a for a, _ in results], offsets, lengths_a, starts, np.asarray(ends, np.int64),
                     np.asarray(index, np.int64))


# ---------------------------------------------------------------- resampling
def _sinc_kernel(orig: int, new: int, width: int = 6, rolloff: float = 0.99) -> torch.Tensor:
    """Hann-windowed sinc polyphase kernel [new, 1, K] (torchaudio's resampling recipe)."""
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    base = min(orig, new) * rolloff
    pad = math.ceil(width * orig / base)
    idx = torch.arange(-pad, pad + orig, dtype=torch.float64)[None] / orig
    t = (-torch.arange(0, new, dtype=torch.float64)[:, None] / new + idx) * base
    t = t.clamp(-width, width)
    window = torch.cos(t * math.pi / width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    return kernel.to(torch.float32)[:, None, :], orig, new, pad  # type: ignore[return-value]


_KERNELS: dict[tuple[int, int, str], tuple[torch.Tensor, int, int, int]] = {}


def resample(x: torch.Tensor, orig: int = ESPEAK_RATE, new: int = SAMPLE_RATE) -> torch.Tensor:
    """[B, T] float -> [B, ceil(T * new / orig)] on x's device."""
    key = (orig, new, str(x.device))
    if key not in _KERNELS:
        kernel, o, n, pad = _sinc_kernel(orig, new)
        _KERNELS[key] = (kernel.to(x.device), o, n, pad)
    kernel, o, n, pad = _KERNELS[key]
    length = x.shape[-1]
    y = torch.nn.functional.conv1d(torch.nn.functional.pad(x[:, None], (pad, pad + o)), kernel.to(x.dtype), stride=o)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)
    return y[:, : math.ceil(n * length / o)]


# ---------------------------------------------------------------- augmentation
def room_impulse(n: int, rng: torch.Generator, device: torch.device, rate: int = SAMPLE_RATE,
                 max_s: float = 0.4) -> torch.Tensor:
    """[n, L] synthetic room responses: a direct path, then exponentially decaying noise
    (RT60 0.15-0.8 s) starting 3-20 ms later."""
    length = int(max_s * rate)
    t = torch.arange(length, device=device, dtype=torch.float32) / rate
    rt60 = 0.15 + 0.65 * torch.rand(n, 1, device=device, generator=rng)
    delay = 0.003 + 0.017 * torch.rand(n, 1, device=device, generator=rng)
    tail = torch.randn(n, length, device=device, generator=rng) * torch.exp(-6.9 * t / rt60)
    tail = torch.where(t[None] >= delay, tail, 0.0)
    ratio = 0.1 + 0.6 * torch.rand(n, 1, device=device, generator=rng)  # reverberant / direct energy
    tail = tail / tail.norm(dim=1, keepdim=True).clamp_min(1e-6) * ratio.sqrt()
    tail[:, 0] = 1.0
    return tail


def augment(waves: torch.Tensor, lengths: torch.Tensor, rng: torch.Generator, reverb_p: float = 0.5,
            noise_p: float = 0.8, snr_db: tuple[float, float] = (5.0, 40.0),
            gain_db: tuple[float, float] = (-25.0, 0.0)) -> torch.Tensor:
    """Room reverb, coloured noise and volume, per row, inside each row's length."""
    b, t = waves.shape
    dev = waves.device
    valid = torch.arange(t, device=dev)[None] < lengths[:, None]
    x = waves
    use_reverb = torch.rand(b, 1, device=dev, generator=rng) < reverb_p
    if bool(use_reverb.any()):
        rir = room_impulse(b, rng, dev)
        n = 1 << (t + rir.shape[1] - 1).bit_length()
        wet = torch.fft.irfft(torch.fft.rfft(x, n) * torch.fft.rfft(rir, n), n)[:, :t]
        wet = wet * (x.norm(dim=1, keepdim=True) / wet.norm(dim=1, keepdim=True).clamp_min(1e-6))
        x = torch.where(use_reverb, wet, x)
    # Noise with a random spectral slope: white (0) to brown (-2) in power per octave.
    white = torch.randn(b, t, device=dev, generator=rng)
    spec = torch.fft.rfft(white)
    freqs = torch.arange(spec.shape[1], device=dev, dtype=torch.float32).clamp_min(1.0)
    slope = -2.0 * torch.rand(b, 1, device=dev, generator=rng)
    noise = torch.fft.irfft(spec * freqs[None] ** (slope / 2), t)
    power = (x.square() * valid).sum(1, keepdim=True) / lengths[:, None].clamp_min(1)
    snr = snr_db[0] + (snr_db[1] - snr_db[0]) * torch.rand(b, 1, device=dev, generator=rng)
    noise = noise / noise.square().mean(1, keepdim=True).sqrt().clamp_min(1e-8)
    noise = noise * (power / 10 ** (snr / 10)).sqrt()
    use_noise = torch.rand(b, 1, device=dev, generator=rng) < noise_p
    x = x + torch.where(use_noise, noise, 0.0)
    gain = gain_db[0] + (gain_db[1] - gain_db[0]) * torch.rand(b, 1, device=dev, generator=rng)
    peak = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-6)
    x = x / peak * 0.9 * 10 ** (gain / 20)
    return torch.where(valid, x, 0.0)


def test_utterance(text: str, seed: int, noise_db: float | None = 30.0) -> tuple[np.ndarray, np.ndarray, int]:
    """One held-out utterance as the tests hear it: float32 16 kHz, character starts in ms and the
    speech end in ms. Seeded voice (as in training) and, if `noise_db`, white noise at that SNR."""
    rng = random.Random(seed)
    utt = shared().synth(text, random_voice(rng))
    lead = int(0.2 * ESPEAK_RATE)
    x = np.concatenate([np.zeros(lead, np.int16), utt.samples, np.zeros(int(0.3 * ESPEAK_RATE), np.int16)])
    wave = resample(torch.from_numpy(x.astype(np.float32) / 32768.0)[None])[0].numpy()
    if noise_db is not None:
        power = float(np.mean(wave**2))
        noise = np.random.default_rng(seed).normal(0, 1, len(wave)).astype(np.float32)
        wave = wave + noise * np.sqrt(power / 10 ** (noise_db / 10))
    wave = (wave / max(1e-6, float(np.abs(wave).max())) * 0.7).astype(np.float32)
    starts_ms = (utt.starts + lead) * 1000 / ESPEAK_RATE
    return wave, starts_ms, int((utt.speech_end + lead) * 1000 / ESPEAK_RATE)


def write_wav(path: Path, wave: np.ndarray) -> None:
    import wave as wavfile

    with wavfile.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes((np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes())
