"""Real audio files in the formats users send, generated on the fly (nothing binary committed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf


def tone_with_noise(seconds: float, rate: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Speech-like test signal: a few harmonics with a wobbling pitch plus noise, float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.15 + rng.normal(0, 0.02, len(t))
    x = x.astype(np.float32)
    if channels > 1:
        x = np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1)
    return x


def encode_soundfile(x: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def encode_av(
    x: np.ndarray, rate: int, codec: str, container: str, *, vbr: bool = False, title: str | None = None
) -> bytes:
    """Encode mono/stereo float audio with PyAV (mp3, aac in mp4/m4a, opus in webm/ogg). For mp3,
    `vbr` gives frames of 208-835 bytes with a Xing tag instead of Info, and `title` a large ID3
    tag before the first frame."""
    import av

    x2 = x if x.ndim == 2 else x[:, None]
    layout = "mono" if x2.shape[1] == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        if title is not None:
            out.metadata["title"] = title
        stream = out.add_stream(codec, rate=rate)
        stream.layout = layout
        if vbr:
            stream.codec_context.flags |= av.codec.context.Flags.qscale
            stream.codec_context.qscale = 4
        frame_size = 960 if codec == "libopus" else 1152
        for start in range(0, len(x2), frame_size):
            block = np.ascontiguousarray(x2[start : start + frame_size].T, dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


# name -> (bytes factory, sample rate, seconds); every format the product promises to read.
def all_formats(seconds: float = 1.5) -> dict[str, bytes]:
    mono16 = tone_with_noise(seconds, 16000)
    st44 = tone_with_noise(seconds, 44100, channels=2)
    mono48 = tone_with_noise(seconds, 48000)
    return {
        "pcm16_16k.wav": encode_soundfile(mono16, 16000, "WAV", "PCM_16"),
        "pcm8_8k.wav": encode_soundfile(tone_with_noise(seconds, 8000), 8000, "WAV", "PCM_U8"),
        "pcm24_44k_stereo.wav": encode_soundfile(st44, 44100, "WAV", "PCM_24"),
        "float32_48k.wav": encode_soundfile(mono48, 48000, "WAV", "FLOAT"),
        "six_channel.wav": encode_soundfile(
            tone_with_noise(seconds, 16000, channels=6), 16000, "WAV", "PCM_16"
        ),
        "stereo.flac": encode_soundfile(st44, 44100, "FLAC", "PCM_16"),
        "vorbis.ogg": encode_soundfile(st44, 44100, "OGG", "VORBIS"),
        "stereo44.mp3": encode_av(st44, 44100, "mp3", "mp3"),
        "aac.m4a": encode_av(mono48, 48000, "aac", "mp4"),
        "opus.webm": encode_av(mono48, 48000, "libopus", "webm"),
    }


def format_folder(src: Path, seconds: float = 2.0) -> dict[str, bytes]:
    """`src` filled as a user's folder: every format of `all_formats` (the mp3s in a subfolder),
    a broken WAV, and a text file that is not audio. Returns the formats written."""
    (src / "sub").mkdir(parents=True)
    formats = all_formats(seconds)
    for name, data in formats.items():
        (src / "sub" / name if name.endswith(".mp3") else src / name).write_bytes(data)
    (src / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(10))
    (src / "notes.txt").write_text("not audio, not picked up")
    return formats
