"""Random bytes into the decoder: only typed errors (ASRError subclasses) ever come out.

Bounded time: a fixed number of examples per test, each with a deadline; the module takes about
20 s on 2 cores (ASR_FUZZ_EXAMPLES=20000 runs a longer soak). Inputs are random bytes, random
bytes behind real headers (WAV/FLAC/OGG/MP3/PNG magic) and corrupted real files, which reach
deeper into the parsers.
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr.errors import ASRError
from asr.pipeline.audio import decode_audio


def _wav_header(rate: int, channels: int, bits: int, fmt: int, n_bytes: int) -> bytes:
    block = channels * bits // 8
    return (
        b"RIFF" + struct.pack("<I", (36 + n_bytes) & 0xFFFFFFFF) + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, fmt, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
        + b"data" + struct.pack("<I", n_bytes & 0xFFFFFFFF)
    )  # fmt: skip


def _real_file() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.sin(np.arange(4000) / 10).astype(np.float32) * 0.3, 16000, format="FLAC")
    return buf.getvalue()


pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("ASR_FUZZ_EXAMPLES", "3000"))
MAGIC = [
    b"",
    b"RIFF",
    b"fLaC",
    b"OggS",
    b"ID3\x03\x00",
    b"\xff\xfb",
    b"\x89PNG\r\n\x1a\n",
    b"\x1aE\xdf\xa3",
    b"ftypM4A ",
]
FLAC = _real_file()


def _decode(data: bytes) -> None:
    try:
        audio = decode_audio(data, max_duration_s=600)
    except ASRError as exc:
        assert str(exc)  # a sentence for the user
        return
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()


@settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=list(HealthCheck), database=None)
@given(magic=st.sampled_from(MAGIC), body=st.binary(max_size=4096))
def test_random_bytes_behind_magic_numbers(magic: bytes, body: bytes) -> None:
    _decode(magic + body)


@settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=list(HealthCheck), database=None)
@given(
    rate=st.sampled_from([0, 1, 8000, 16000, 44100, 2**31 - 1]),
    channels=st.sampled_from([0, 1, 2, 6, 255]),
    bits=st.sampled_from([0, 8, 16, 24, 32, 64]),
    fmt=st.sampled_from([0, 1, 3, 0xFFFE, 7]),
    claimed=st.integers(min_value=0, max_value=2**32 - 1),
    body=st.binary(max_size=8192),
)
def test_wav_headers_with_random_fields(
    rate: int, channels: int, bits: int, fmt: int, claimed: int, body: bytes
) -> None:
    _decode(_wav_header(rate, channels, bits, fmt, claimed) + body)


@settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=list(HealthCheck), database=None)
@given(
    cut=st.integers(min_value=0, max_value=len(FLAC)),
    flips=st.lists(st.integers(0, len(FLAC) - 1), max_size=8),
)
def test_truncated_and_corrupted_real_file(cut: int, flips: list[int]) -> None:
    data = bytearray(FLAC)
    for i in flips:
        data[i] ^= 0xFF
    _decode(bytes(data[:cut]))
