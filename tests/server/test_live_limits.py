"""Against a real server process on loopback started with explicit limits: binding, load and
memory, oversized bodies cut off while streaming, a 2-hour recording.

Order matters: the load test runs first, so its memory readings are not disturbed by the
2-hour upload.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from load import run_load, write_report  # tests/load.py (tests/ is on sys.path)

from .conftest import LiveServer, start_server, wav_bytes

MAX_UPLOAD_MB = 300
MAX_AUDIO_S = 3600


@pytest.fixture(scope="module")
def limited_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {
        "ASR_LIMITS__MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
        "ASR_LIMITS__MAX_AUDIO_S": str(MAX_AUDIO_S),
        "ASR_LIMITS__MAX_QUEUE": "256",
    }
    server = start_server(tiny_model_dir, tmp_path_factory.mktemp("limited"), env=env)
    try:
        yield server
    finally:
        server.stop()


def reset_peak(pid: int) -> None:
    """Reset the process's peak resident memory (VmHWM) to its current value (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def vm_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_listens_on_loopback_only(limited_server: LiveServer) -> None:
    port = int(limited_server.url.rsplit(":", 1)[1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, port_hex = local.rsplit(":", 1)
            if int(port_hex, 16) == port and state == "0A":  # 0A = LISTEN
                listening.append(addr)
    assert listening == ["0100007F"], listening  # 127.0.0.1, nothing else (no 0.0.0.0, no ::)


@pytest.mark.slow
def test_200_concurrent_clients_no_errors_flat_memory(limited_server: LiveServer, output_dir: Path) -> None:
    duration = 12.0
    report = asyncio.run(
        run_load(limited_server.url, duration_s=duration, concurrency=200, pid=limited_server.process.pid)
    )
    summary = report.summary()
    path = write_report(report, f"load-{duration:g}s.json")
    print("\nload:", json.dumps(summary), "->", path)
    assert report.errors == [], report.errors[:5]
    assert report.answered == report.sent  # every request got an answer
    assert report.ok > 200, summary
    # Only documented refusals: 503 with Retry-After when the queue is full (counted as busy_503).
    assert report.ok + report.busy_503 == report.answered
    warm, end = summary["rss_mb_after_warmup"], summary["rss_mb_at_end"]
    assert warm is not None and end is not None
    assert end - warm < max(32.0, 0.05 * warm), f"resident memory grew from {warm:.0f} to {end:.0f} MB"
    assert summary["latency_p99_s"] is not None
    # The server still answers normally afterwards.
    assert (
        httpx.post(
            limited_server.url + "/api/transcribe", files={"file": ("a.wav", wav_bytes(1.0))}
        ).status_code
        == 200
    )


def _raw_post(
    url: str, headers: list[str], body_chunks: Iterator[bytes], *, limit_bytes: int
) -> tuple[str, int]:
    """POST over a raw socket; stops sending once the server answers. Returns (response, bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sent = 0
    reply = b""
    try:
        head = "\r\n".join(["POST /api/transcribe HTTP/1.1", f"Host: {host}", *headers, "", ""])
        sock.sendall(head.encode())
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered (or closed): stop sending
            try:
                sock.sendall(chunk)
            except (ConnectionError, TimeoutError):
                break
            sent += len(chunk)
            assert sent <= limit_bytes * 3, "the server kept reading far past the limit"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                more = sock.recv(65536)
            except (ConnectionError, TimeoutError):
                break
            if not more:
                break
            reply += more
        return reply.decode(errors="replace"), sent
    finally:
        sock.close()


def test_declared_oversized_body_is_refused_before_it_is_read(limited_server: LiveServer) -> None:
    limit = MAX_UPLOAD_MB * 1048576
    headers = ["Content-Type: multipart/form-data; boundary=xyz", f"Content-Length: {10 * 2**30}"]
    t0 = time.monotonic()
    reply, sent = _raw_post(limited_server.url, headers, iter([b"x" * 65536] * 10_000), limit_bytes=limit)
    assert reply.startswith("HTTP/1.1 413"), reply[:300]
    assert '"limit_exceeded"' in reply and "limits.max_upload_mb" in reply
    assert sent < 64 * 1048576 and time.monotonic() - t0 < 10  # answered long before 10 GB arrived


def test_chunked_oversized_body_is_cut_off_while_streaming(limited_server: LiveServer) -> None:
    limit = MAX_UPLOAD_MB * 1048576
    block = 1 << 20
    part_head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'

    def chunks() -> Iterator[bytes]:
        yield b"%x\r\n%s\r\n" % (len(part_head), part_head)
        payload = b"\0" * block
        while True:
            yield b"%x\r\n%s\r\n" % (len(payload), payload)

    headers = ["Content-Type: multipart/form-data; boundary=xyz", "Transfer-Encoding: chunked"]
    reset_peak(limited_server.process.pid)
    before = vm_kb(limited_server.process.pid, "VmRSS")
    reply, sent = _raw_post(limited_server.url, headers, chunks(), limit_bytes=limit)
    assert reply.startswith("HTTP/1.1 413"), reply[:300]
    assert "limits.max_upload_mb" in reply
    assert limit < sent < limit + 64 * block  # cut off just past the limit, not at the end
    # The body streamed to a temporary file, not into memory.
    assert vm_kb(limited_server.process.pid, "VmHWM") - before < 100 * 1024
    ok = httpx.post(limited_server.url + "/api/transcribe", files={"file": ("a.wav", wav_bytes(1.0))})
    assert ok.status_code == 200


def _two_hour_wav(path: Path, seconds: int = 2 * 3600, rate: int = 16000) -> Path:
    """A 16-bit mono WAV of low noise, written block by block (230 MB, never whole in memory)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16", format="WAV") as out:
        block = rng.normal(0, 0.01, rate * 60).astype(np.float32)  # one minute, repeated
        for _ in range(seconds // 60):
            out.write(block)
    return path


def test_two_hour_recording_is_refused_over_max_audio_s_with_bounded_memory(
    limited_server: LiveServer, tmp_path: Path
) -> None:
    path = _two_hour_wav(tmp_path / "two-hours.wav")
    size = path.stat().st_size
    assert size > 200 * 1048576
    pid = limited_server.process.pid
    reset_peak(pid)
    before = vm_kb(pid, "VmRSS")
    t0 = time.monotonic()
    with path.open("rb") as fh:  # httpx streams the file from disk
        resp = httpx.post(
            limited_server.url + "/api/transcribe", files={"file": ("two-hours.wav", fh)}, timeout=120
        )
    elapsed = time.monotonic() - t0
    assert resp.status_code == 413, resp.text
    err = resp.json()["error"]
    assert (
        err["code"] == "audio_too_long"
        and "limits.max_audio_s" in err["message"]
        and "3600" in err["message"]
    )
    # Refused from the header: no decoding of two hours (230 MB of PCM would be 460 MB of float).
    grown_mb = (vm_kb(pid, "VmHWM") - before) / 1024
    mb = size / 1048576
    print(f"\n2-hour upload ({mb:.0f} MB): refused in {elapsed:.1f} s, peak RSS grew {grown_mb:.0f} MB")
    assert grown_mb < 1.3 * size / 1048576
    ok = httpx.post(limited_server.url + "/api/transcribe", files={"file": ("a.wav", wav_bytes(1.0))})
    assert ok.status_code == 200
