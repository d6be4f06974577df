"""Decoded-audio amplification (#16 item 2) against a real server process: a small upload that
decodes to a lot of audio (8-bit PCM at 1 kHz: 1 byte per sample, 64 bytes per sample once decoded
to float32 at 16 kHz) is streamed, so concurrent long uploads keep the server's memory near its
budget instead of decoding each file whole."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from .conftest import LiveServer, start_server
from .test_live_limits import reset_peak, vm_kb

FILES = 4
BUDGET_MB = 32


def _low_rate_wav(minutes: float, seed: int) -> bytes:
    """`minutes` of speech-like tones, 8-bit PCM at 1 kHz: 60 kB per minute, 3.84 MB decoded."""
    rate = 1000
    rng = np.random.default_rng(seed)
    t = np.arange(int(minutes * 60 * rate)) / rate
    gate = (np.sin(2 * np.pi * 0.2 * t) > -0.3).astype(np.float32)
    x = 0.4 * np.sin(2 * np.pi * 180 * t) * gate + 0.02 * rng.standard_normal(len(t))
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), rate, format="WAV", subtype="PCM_U8")
    return buf.getvalue()


@pytest.fixture(scope="module")
def budget_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"ASR_LIMITS__DECODED_AUDIO_MB": str(BUDGET_MB), "ASR_LONGFORM__GROUP_S": "60"}
    server = start_server(tiny_model_dir, tmp_path_factory.mktemp("budget"), env=env)
    try:
        yield server
    finally:
        server.stop()


def _wave(server: LiveServer, minutes: float) -> tuple[float, float]:
    """FILES concurrent uploads of `minutes` each; (peak RSS growth MB, most decoded audio the
    service held, MB)."""
    pid = server.process.pid
    files = [_low_rate_wav(minutes, seed=i) for i in range(FILES)]
    reset_peak(pid)
    before_mb = vm_kb(pid, "VmRSS") / 1024
    held: list[float] = []
    done = threading.Event()

    def watch() -> None:  # the service's own account of decoded audio held, sampled during the run
        while not done.is_set():
            held.append(httpx.get(server.url + "/api/info", timeout=10).json()["decoded_audio_mb"]["held"])
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
            return await asyncio.gather(*(
                client.post("/api/transcribe", files={"file": (f"{i}.wav", data)}, data={"vad": "off"})
                for i, data in enumerate(files)
            ))

    responses = asyncio.run(post_all())
    done.set()
    watcher.join()
    assert [r.status_code for r in responses] == [200] * FILES, [r.text[:200] for r in responses]
    for r in responses:
        body = r.json()
        assert body["duration_ms"] == minutes * 60_000
        # Streamed: cut into clips of at most engine.max_clip_s, never one long clip.
        assert len(body["segments"]) >= minutes
    return vm_kb(pid, "VmHWM") / 1024 - before_mb, max(held)


@pytest.mark.slow
def test_memory_does_not_grow_with_the_length_of_concurrent_uploads(budget_server: LiveServer) -> None:
    """After a first wave has brought the server's pools to their working size, four 10-minute
    uploads at once and then four 30-minute ones: decoded whole they would hold 147 MB and
    440 MB more; streamed, memory does not grow with their length, and the service never holds
    more decoded audio than its budget."""
    _wave(budget_server, 5)  # allocator pools, thread buffers and the engine's shapes at working size
    growth_10, held_10 = _wave(budget_server, 10)
    growth_30, held_30 = _wave(budget_server, 30)
    print(f"peak RSS growth: 4 x 10 min +{growth_10:.0f} MB, then 4 x 30 min +{growth_30:.0f} MB; "
          f"decoded audio held at most {max(held_10, held_30):.1f} MB of {BUDGET_MB}")
    assert max(held_10, held_30) <= BUDGET_MB
    whole_30_mb = FILES * 30 * 60 * 16000 * 4 / 2**20
    whole_10_mb = whole_30_mb / 3
    # Tripling the length adds far less than decoding whole would (+293 MB); what each wave needs
    # is the working memory of four streams and the engine's batches, not their recordings. The
    # bounds leave room for the allocator: the peak RSS of a wave moves by tens of MB from run to
    # run (six runs on 2 cores, 2026-12-01: growth 126-190 MB for 10 min, 168-230 MB for 30 min).
    assert growth_30 - growth_10 < (whole_30_mb - whole_10_mb) / 2, (growth_10, growth_30, whole_30_mb)
    assert growth_30 < 0.6 * whole_30_mb, (growth_10, growth_30, whole_30_mb)
