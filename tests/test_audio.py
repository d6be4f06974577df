from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import all_formats, encode_av, encode_soundfile, tone_with_noise

from asr.errors import AudioError, LimitError
from asr.pipeline.audio import SAMPLE_RATE, decode_audio

FORMATS = all_formats(1.5)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_decodes_to_16k_mono_float(name: str, tmp_path) -> None:
    data = FORMATS[name]
    path = tmp_path / name
    path.write_bytes(data)
    for source in (data, path, str(path), io.BytesIO(data)):
        audio = decode_audio(source)
        assert audio.dtype == np.float32 and audio.ndim == 1
        # Lossy codecs add priming samples; the length stays within 20 ms of 1.5 s.
        assert abs(len(audio) - 1.5 * SAMPLE_RATE) < 0.02 * SAMPLE_RATE
        assert 0.1 < np.abs(audio).max() <= 1.0
        assert np.isfinite(audio).all()


def test_16k_audio_is_not_resampled() -> None:
    x = tone_with_noise(1.0, 16000)
    decoded = decode_audio(encode_soundfile(x, 16000, "WAV", "FLOAT"))
    np.testing.assert_array_equal(decoded, x)


def test_resampling_keeps_the_tone() -> None:
    rate = 44100
    t = np.arange(rate) / rate
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    y = decode_audio(encode_soundfile(x, rate, "WAV", "FLOAT"))
    spectrum = np.abs(np.fft.rfft(y[1000:-1000]))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(y[1000:-1000])
    assert abs(peak_hz - 1000) < 2


def test_stereo_is_averaged() -> None:
    left = np.full(16000, 0.5, np.float32)
    right = np.full(16000, -0.1, np.float32)
    y = decode_audio(encode_soundfile(np.stack([left, right], 1), 16000, "WAV", "FLOAT"))
    np.testing.assert_allclose(y, 0.2, atol=1e-6)


def _wav_header(n_samples: int) -> bytes:
    data_bytes = n_samples * 2
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_file"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),  # truncated header
        (b"\x89PNG\r\n\x1a\n" + bytes(200), None),
        ("这不是音频文件，只是一段文字。\n".encode() * 20, "unsupported_format"),
        (_wav_header(0), None),  # a valid header with no samples
    ],
    ids=["empty", "truncated-header", "png", "text", "no-samples"],
)
def test_bad_input_raises_audio_error(data: bytes, code: str | None) -> None:
    with pytest.raises(AudioError) as info:
        decode_audio(data)
    assert str(info.value)  # a sentence for the user
    if code:
        assert info.value.code == code


def test_nan_and_inf_are_rejected() -> None:
    x = tone_with_noise(0.5, 16000)
    x[100] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        decode_audio(encode_soundfile(x, 16000, "WAV", "FLOAT"))
    x[100] = np.inf
    with pytest.raises(AudioError, match="infinite"):
        decode_audio(encode_soundfile(x, 16000, "WAV", "FLOAT"))


def test_header_claiming_2_pow_31_samples_is_bounded() -> None:
    # The header promises ~4 GiB of samples; only one second follows. We must not allocate the
    # promise, and we decode what is really there.
    pcm = (tone_with_noise(1.0, 16000) * 32767).astype("<i2").tobytes()
    header = bytearray(_wav_header(1))
    header[40:44] = struct.pack("<I", 2**31)
    audio = decode_audio(bytes(header) + pcm)
    assert len(audio) == 16000


def test_too_long_is_a_limit_error() -> None:
    data = encode_soundfile(np.zeros(16000 * 5, np.float32), 16000, "WAV", "PCM_16")
    with pytest.raises(LimitError, match="3 seconds"):
        decode_audio(data, max_duration_s=3)
    assert len(decode_audio(data, max_duration_s=6)) == 16000 * 5


def test_truncated_data_keeps_what_decoded() -> None:
    data = encode_soundfile(tone_with_noise(2.0, 16000), 16000, "WAV", "PCM_16")
    audio = decode_audio(data[: len(data) // 2])
    assert 0.9 * SAMPLE_RATE < len(audio) < 1.1 * SAMPLE_RATE


def test_missing_file() -> None:
    with pytest.raises(AudioError, match="No such audio file"):
        decode_audio("/nonexistent/x.wav")


def test_sf_roundtrip_sanity() -> None:
    # soundfile itself must be able to read what encode_soundfile wrote (fixture sanity).
    y, rate = sf.read(io.BytesIO(FORMATS["pcm16_16k.wav"]))
    assert rate == 16000 and len(y) == 24000


@pytest.mark.parametrize("channels", [1, 2])
def test_pcm16_wav_fast_path_equals_libsndfile(channels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from asr.pipeline import audio as audio_module

    rng = np.random.default_rng(channels)
    x = rng.normal(0, 0.3, (16000 * 2 + 3, channels)).clip(-1, 1).astype(np.float32)
    data = encode_soundfile(x, 16000, "WAV", "PCM_16")
    want, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    want = want.mean(axis=1, dtype=np.float32) if channels > 1 else want[:, 0]
    monkeypatch.setattr(audio_module, "_open_soundfile", lambda *a: pytest.fail("took the libsndfile path"))
    got = decode_audio(data)
    assert rate == 16000 and got.dtype == np.float32 and np.array_equal(got, want)
    with pytest.raises(LimitError, match="1 seconds"):
        decode_audio(data, max_duration_s=1)


def test_pcm16_wav_fast_path_reads_a_spooled_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    """The web server hands over its spooled upload (a SpooledTemporaryFile, mode 'w+b'): 16-bit
    WAV still takes the fast path, not libsndfile's per-read Python callbacks."""
    import tempfile

    from asr.pipeline import audio as audio_module

    data = encode_soundfile(tone_with_noise(2.0, 16000), 16000, "WAV", "PCM_16")
    with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spooled:
        spooled.write(data)
        spooled.seek(0)
        monkeypatch.setattr(audio_module, "_open_soundfile", lambda *a: pytest.fail("took the libsndfile path"))
        assert np.array_equal(decode_audio(spooled), decode_audio(data))


# ---- channels="split": the same decoders, channels kept apart --------------------------------


def _two_tones(rate: int, seconds: float = 1.0) -> np.ndarray:
    """Left 500 Hz, right 1500 Hz: which channel is which can be told from the spectrum."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.4 * np.sin(2 * np.pi * 500 * t), 0.4 * np.sin(2 * np.pi * 1500 * t)], 1).astype(np.float32)


def _peak_hz(x: np.ndarray) -> float:
    x = x[800:-800]
    return float(np.argmax(np.abs(np.fft.rfft(x))) * SAMPLE_RATE / len(x))


def _split(source: bytes) -> tuple[np.ndarray, int]:
    from asr.pipeline.audio import open_audio

    with open_audio(source, channels="split") as stream:
        blocks = list(stream.blocks())
        return np.concatenate(blocks), stream.channels


@pytest.mark.parametrize(
    ("name", "encode"),
    [
        ("pcm16 8 kHz (telephone, the wave fast path)", lambda x: encode_soundfile(x, 8000, "WAV", "PCM_16")),
        ("flac 8 kHz (libsndfile)", lambda x: encode_soundfile(x, 8000, "FLAC", "PCM_16")),
        ("mp3 16 kHz (FFmpeg)", lambda x: encode_av(_two_tones(16000, 1.5), 16000, "libmp3lame", "mp3")),
    ],
)
def test_split_keeps_each_channel_apart(name: str, encode: Any) -> None:
    data = encode(_two_tones(8000))
    audio, channels = _split(data)
    assert channels == 2 and audio.ndim == 2 and audio.shape[1] == 2 and audio.dtype == np.float32
    assert abs(_peak_hz(audio[:, 0]) - 500) < 5 and abs(_peak_hz(audio[:, 1]) - 1500) < 5
    # The mixed stream of the same bytes is the mean of the split channels.
    mixed = decode_audio(data)
    assert len(mixed) == len(audio)
    np.testing.assert_allclose(mixed, audio.mean(axis=1), atol=2e-3)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_split_gives_every_format_its_channel_count(name: str) -> None:
    audio, channels = _split(FORMATS[name])
    expected = 6 if "six" in name else 2 if ("stereo" in name or name in ("vorbis.ogg",)) else 1
    assert channels == expected and audio.shape[1] == expected
    assert abs(len(audio) - 1.5 * SAMPLE_RATE) < 0.02 * SAMPLE_RATE
