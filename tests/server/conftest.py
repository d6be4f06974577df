"""Fixtures for the service tests: real audio files, an in-process app, a real server process.

Every app here runs the real engine on the tiny model (``tiny_model_dir`` from tests/conftest.py).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import encode_av
from fastapi.testclient import TestClient

from asr.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
SR = 16000


def _signal(seconds: float, seed: int) -> np.ndarray:
    """Speech-like test audio: gated harmonic tones over low noise (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 40 * seed % 200
    voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    gate = (np.sin(2 * np.pi * (2 + seed % 3) * t) > -0.2).astype(np.float32)
    audio = 0.3 * voiced * gate + 0.01 * rng.standard_normal(len(t))
    return (audio / np.max(np.abs(audio)) * 0.7).astype(np.float32)


def wav_bytes(seconds: float = 1.5, seed: int = 0, rate: int = SR) -> bytes:
    buf = io.BytesIO()
    audio = _signal(seconds, seed)
    if rate != SR:
        audio = np.interp(np.arange(int(len(audio) * rate / SR)) * SR / rate, np.arange(len(audio)), audio)
    sf.write(buf, audio.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def encoded_bytes(fmt: str, seconds: float = 1.5, seed: int = 0) -> bytes:
    """Encode test audio with PyAV: fmt in mp3, m4a (AAC), ogg (Opus)."""
    container_fmt, codec = {"mp3": ("mp3", "libmp3lame"), "m4a": ("ipod", "aac"), "ogg": ("ogg", "libopus")}[
        fmt
    ]
    audio = _signal(seconds, seed)
    rate = 48000 if fmt == "ogg" else 44100
    audio = np.interp(np.arange(int(len(audio) * rate / SR)) * SR / rate, np.arange(len(audio)), audio)
    return encode_av(audio.astype(np.float32), rate, codec, container_fmt)


CORRUPT = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20  # a WAV header that ends mid-way


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real files on disk: five wavs of different lengths, an mp3, an m4a, an ogg (Opus), a corrupt
    file."""
    root = tmp_path_factory.mktemp("audio")
    for i, secs in enumerate((1.0, 1.6, 2.2, 0.8, 3.0)):
        (root / f"clip{i}.wav").write_bytes(wav_bytes(secs, seed=i))
    for fmt in ("mp3", "m4a", "ogg"):
        (root / f"clip.{fmt}").write_bytes(encoded_bytes(fmt, 1.5, seed=7))
    (root / "corrupt.wav").write_bytes(CORRUPT)
    return root


def service_settings(model_dir: Path, data_dir: Path, **overrides: Any) -> Settings:
    """CPU settings for tests; ``overrides`` are nested dicts merged over them."""
    base: dict[str, Any] = {
        "engine": {"model": str(model_dir), "device": "cpu", "dtype": "fp32", "max_batch_size": 16},
        "server": {"data_dir": str(data_dir), "batch_wait_ms": 10},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value}
    return load_settings(None, **base)


@pytest.fixture(scope="session")
def shared_engine(engine: Any) -> Any:
    """One engine (tests/conftest.py's, tiny model on CPU) for every in-process app: loading is
    the slow part, and the engine keeps no per-request state."""
    return engine


@pytest.fixture()
def client(tiny_model_dir: Path, shared_engine: Any, tmp_path: Path) -> Iterator[TestClient]:
    """The full app (API + UI) in process, behind an httpx-based ASGI client; lifespan runs."""
    from asr.web import create_app

    app = create_app(service_settings(tiny_model_dir, tmp_path / "data"), engine=shared_engine)
    with TestClient(app) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(
    model_dir: Path,
    work: Path,
    port: int | None = None,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
) -> LiveServer:
    """Start ``webui.py`` as users do and wait until /healthz says ready.

    ``env`` adds ASR_* settings (e.g. ``ASR_LIMITS__MAX_QUEUE``); ``args`` adds flags."""
    port = port or free_port()
    log_path = work / f"server-{port}-{time.monotonic_ns()}.log"
    cmd = [
        sys.executable, str(REPO / "webui.py"),
        "--config", "cpu", "--model", str(model_dir), "--port", str(port),
        "--data-dir", str(work / "data"), "--max-batch-size", "16", "--no-autolaunch", *(args or []),
    ]  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    if "ASR_TEST_NET_LOG" not in full_env:
        # The server may reach this machine only (tests/server/nethook/sitecustomize.py).
        full_env["ASR_TEST_NET_LOG"] = str(work / f"net-{port}.log")
        full_env["PYTHONPATH"] = f"{Path(__file__).parent / 'nethook'}{os.pathsep}{full_env['PYTHONPATH']}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    server = LiveServer(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"server did not become healthy in 120 s:\n{server.log()[-3000:]}")
        time.sleep(0.3)


@pytest.fixture(scope="session")
def live_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """``webui.py`` as users start it, on a free loopback port; stopped after the session."""
    server = start_server(tiny_model_dir, tmp_path_factory.mktemp("live"))
    try:
        yield server
    finally:
        server.stop()
