"""Live recognition over WebSocket (docs/live.md): FunASR runtime's protocol, its limits and
refusals, and the final text against /api/transcribe.

Written from FunASR's runtime/docs/websocket_protocol.md: a JSON configuration (mode, wav_name,
wav_format, is_speaking, chunk_size, chunk_interval, hotwords as a JSON object of weights, itn,
audio_fs), then binary 16-bit PCM, then {"is_speaking": false}; answers are JSON with mode
(2pass-online / 2pass-offline / online / offline), text, wav_name, is_final, timestamp (a JSON
string of [start, end] pairs in ms) and stamp_sents. The in-process tests use FastAPI's
TestClient; the real-server tests use uvicorn as users run it, FunASR's client from PyPI
(funasr-client) and a raw socket for a client that stops reading.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import struct
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from speech import SENTENCES, recording, require_espeak
from starlette.websockets import WebSocketDisconnect

from .conftest import LiveServer, service_settings, start_server

SR = 16000
MESSAGE = 1920  # bytes: 60 ms of 16 kHz 16-bit PCM, as FunASR's clients send


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """Three sentences with pauses, as 16-bit values (what the server receives)."""
    require_espeak()
    rec = recording(SENTENCES[:3], [1.2], lead_s=0.6)
    return np.round(np.clip(rec.audio, -1, 1) * 32767).astype("<i2")


def wav_of(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def config(**fields: Any) -> str:
    base = {"mode": "2pass", "wav_name": "t", "wav_format": "pcm", "audio_fs": SR, "is_speaking": True,
            "chunk_size": [5, 10, 5], "chunk_interval": 10, "itn": False}  # fmt: skip
    return json.dumps({**base, **fields})


def send_pcm(ws: Any, pcm: bytes, pace_s: float = 0.0) -> None:
    send = ws.send_bytes if hasattr(ws, "send_bytes") else ws.send
    for i in range(0, len(pcm), MESSAGE):
        send(pcm[i : i + MESSAGE])
        if pace_s:
            time.sleep(pace_s)


def until_final(ws: Any) -> list[dict[str, Any]]:
    out = []
    while True:
        msg = json.loads(ws.receive_text() if hasattr(ws, "receive_text") else ws.recv(timeout=120))
        out.append(msg)
        if msg["is_final"]:
            return out


def live_info(client: TestClient, **headers: str) -> dict[str, Any]:
    """/api/info's live counters once closed connections are cleaned up (the server notices a
    close a moment after the client)."""
    deadline = time.monotonic() + 5
    while True:
        info = client.get("/api/info", headers=headers).json()["live"]
        if info["connections"] == 0 or time.monotonic() > deadline:
            return info  # type: ignore[no-any-return]
        time.sleep(0.05)


def app_client(tiny_model_dir: Path, engine: Any, data: Path, **live: Any) -> TestClient:
    from asr.web import create_app

    live = {"max_speed": 1000.0, "burst_s": 1000.0, **live}
    settings = service_settings(tiny_model_dir, data, server={"ui": False}, live=live)
    return TestClient(create_app(settings, engine=engine))


@pytest.fixture(scope="module")
def fast(tiny_model_dir: Path, shared_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app in process; audio may arrive faster than real time (files replayed quickly)."""
    with app_client(tiny_model_dir, shared_engine, tmp_path_factory.mktemp("live")) as c:
        yield c


def test_2pass_partials_then_finals_each_equal_to_api_transcribe_of_its_audio(fast: TestClient,
                                                                             speech: np.ndarray) -> None:
    with fast.websocket_connect("/api/live", subprotocols=["binary"]) as ws:
        assert ws.accepted_subprotocol == "binary"  # FunASR's clients ask for it
        ws.send_text(config(hotwords=json.dumps({"北京": 20, "会议": 30})))
        # 3x real time: each sentence stays open longer than one partial interval (600 ms), so
        # every segment gets a partial whatever the machine's load (at 15x one sometimes did not).
        send_pcm(ws, speech.tobytes(), pace_s=0.02)
        ws.send_text(json.dumps({"is_speaking": False}))
        messages = until_final(ws)

    finals = [m for m in messages if m["mode"] == "2pass-offline" and m["text"]]
    assert len(finals) == 3, [m["mode"] for m in messages]  # one per sentence
    assert messages[-1]["is_final"] is True and messages[-1]["is_end"] is True
    assert all(m["is_final"] is False for m in messages[:-1])
    assert {m["wav_name"] for m in messages} == {"t"}
    for final in finals:
        seg = final["seg"]
        partials = [m for m in messages if m["mode"] == "2pass-online" and m["seg"] == seg]
        assert partials, f"segment {seg} had no partial text"
        assert messages.index(partials[-1]) < messages.index(final)
        # FunASR's clients append each partial's text: together the longest hypothesis.
        assert len("".join(p["text"] for p in partials)) == max(len(p["segment_text"]) for p in partials)
        # The final is the pipeline's text for exactly that audio: /api/transcribe agrees.
        start, end = final["start_ms"] * SR // 1000, final["end_ms"] * SR // 1000
        alone = fast.post("/api/transcribe", files={"file": ("seg.wav", wav_of(speech[start:end]))},
                          data={"hotwords": "北京 会议", "itn": "off"}).json()  # fmt: skip
        assert final["text"] == alone["text"]
        stamps = json.loads(final["timestamp"])
        assert [[t["start_ms"] + final["start_ms"], t["end_ms"] + final["start_ms"]] for t in alone["tokens"]] == stamps
        assert all(final["start_ms"] <= a <= b <= final["end_ms"] for a, b in stamps)
        assert [p for s in final["stamp_sents"] for p in s["ts_list"]] == stamps
        assert "".join(s["text_seg"].replace(" ", "") + s["punc"] for s in final["stamp_sents"]) == final["text"]
    info = live_info(fast)
    assert info["connections"] == 0 and info["finals_sent"] >= 3
    # Where a final's time went, by stage (the figures behind docs/live.md's latency section).
    stages = info["stages"]
    assert stages["final"]["n"] == stages["final_recognise"]["n"] == stages["final_assemble"]["n"] >= 3
    assert stages["tick"]["n"] >= stages["vad"]["n"] >= 1
    for stage in ("final", "final_recognise", "final_assemble", "tick", "vad"):
        assert 0 < stages[stage]["p50_ms"] <= stages[stage]["p95_ms"] <= stages[stage]["max_ms"]
    assert stages["final"]["max_ms"] >= stages["final_recognise"]["max_ms"]


def test_online_mode_sends_appendable_text_and_no_second_pass(fast: TestClient, speech: np.ndarray) -> None:
    with fast.websocket_connect("/api/live") as ws:
        ws.send_text(config(mode="online"))
        send_pcm(ws, speech[: 8 * SR].tobytes(), pace_s=0.004)
        ws.send_text(json.dumps({"is_speaking": False}))
        messages = until_final(ws)
    assert {m["mode"] for m in messages} == {"online"}
    finals = [m for m in messages if "segment_text" in m and "stamp_sents" not in m and "is_end" in m]
    assert messages[-1]["is_final"] is True
    appended = "".join(m["text"] for m in messages)
    assert appended, "the tiny model yields text for this speech"
    assert finals or messages[-1]["text"] == ""


def test_offline_mode_answers_once_as_api_transcribe(fast: TestClient, speech: np.ndarray) -> None:
    wav = wav_of(speech[: 6 * SR])
    api = fast.post("/api/transcribe", files={"file": ("a.wav", wav)}, data={"itn": "off"}).json()
    assert api["text"]
    for fmt, payload in (("pcm", speech[: 6 * SR].tobytes()), ("wav", wav)):
        with fast.websocket_connect("/") as ws:  # FunASR's clients connect to the bare host:port
            ws.send_text(config(mode="offline", wav_format=fmt, wav_name=f"f.{fmt}"))
            for i in range(0, len(payload), 65536):
                ws.send_bytes(payload[i : i + 65536])
            ws.send_text(json.dumps({"is_speaking": False}))
            (msg,) = until_final(ws)
        assert msg["mode"] == "offline" and msg["wav_name"] == f"f.{fmt}"
        assert msg["text"] == api["text"]
        assert json.loads(msg["timestamp"]) == [[t["start_ms"], t["end_ms"]] for t in api["tokens"]]


def test_8khz_pcm_is_resampled(fast: TestClient, speech: np.ndarray) -> None:
    import soxr

    low = np.round(soxr.resample(speech.astype(np.float32), SR, 8000)).astype("<i2")
    with fast.websocket_connect("/api/live") as ws:
        ws.send_text(config(audio_fs=8000))
        for i in range(0, len(low) * 2, 960):
            ws.send_bytes(low.tobytes()[i : i + 960])
        ws.send_text(json.dumps({"is_speaking": False}))
        messages = until_final(ws)
    finals = [m for m in messages if m["mode"] == "2pass-offline" and m["text"]]
    assert len(finals) == 3
    # Times are on the 16 kHz timeline of the stream: the first sentence starts after the 0.6 s lead.
    assert 200 <= finals[0]["start_ms"] <= 700


# ---- refusals: each closes one connection with a code and a reason; the rest goes on --------


@pytest.fixture(scope="module")
def strict(tiny_model_dir: Path, shared_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with app_client(tiny_model_dir, shared_engine, tmp_path_factory.mktemp("strict"), max_connections=2,
                    idle_timeout_s=1.0, max_session_s=12.0, max_message_kb=64, max_speed=2.0,
                    burst_s=4.0) as c:  # fmt: skip
        yield c


def closed_with(ws: Any) -> tuple[int, str]:
    with pytest.raises(WebSocketDisconnect) as info:
        for _ in range(1000):
            ws.receive_text()
    return info.value.code, info.value.reason


def works(client: TestClient, speech: np.ndarray) -> None:
    """A normal short session on the same server: nothing else was affected."""
    with client.websocket_connect("/api/live") as ws:
        ws.send_text(config())
        send_pcm(ws, speech[: int(3.5 * SR)].tobytes())
        ws.send_text(json.dumps({"is_speaking": False}))
        assert until_final(ws)[-1]["is_final"] is True
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("first", "code", "words"),
    [
        (b"\x00\x01" * 100, 1008, "before the JSON configuration"),
        ("{not json", 1007, "must be JSON"),
        ('["a", "list"]', 1007, "JSON object"),
        (config(audio_fs=100), 1007, "audio_fs"),
        (config(audio_fs="16000"), 1007, "audio_fs"),
        (config(mode="3pass"), 1007, "mode"),
        (config(wav_format="mp3"), 1007, "PCM"),
        (config(chunk_size=[5]), 1007, "chunk_size"),
        (config(hotwords=json.dumps({"x" * 40: 10})), 1008, "hotword"),
    ],
)
def test_bad_first_message_closes_with_code_and_reason(strict: TestClient, speech: np.ndarray, first: Any,
                                                       code: int, words: str) -> None:
    with strict.websocket_connect("/api/live") as ws:
        (ws.send_bytes if isinstance(first, bytes) else ws.send_text)(first)
        got_code, reason = closed_with(ws)
    assert got_code == code
    assert words.lower() in reason.lower()
    works(strict, speech)


def test_limits_close_with_code_and_reason(strict: TestClient, speech: np.ndarray) -> None:
    # A message over live.max_message_kb (64 kB).
    with strict.websocket_connect("/api/live") as ws:
        ws.send_text(config())
        ws.send_bytes(b"\x00" * (65 * 1024))
        assert closed_with(ws)[0] == 1009
    # Audio faster than live.max_speed (2x) beyond live.burst_s (4 s): 10 s at once.
    with strict.websocket_connect("/api/live") as ws:
        ws.send_text(config())
        send_pcm(ws, speech[: 10 * SR].tobytes())
        code, reason = closed_with(ws)
        assert code == 1008 and "live_too_fast" in reason
    # Nothing for live.idle_timeout_s (1 s).
    with strict.websocket_connect("/api/live") as ws:
        ws.send_text(config())
        code, reason = closed_with(ws)
        assert code == 1008 and "live_idle" in reason
    # Connections past live.max_connections (2): the third is closed with 1013 (try later).
    with strict.websocket_connect("/api/live") as a, strict.websocket_connect("/api/live") as b:
        a.send_text(config())
        b.send_text(config())
        with strict.websocket_connect("/api/live") as c:
            code, reason = closed_with(c)
            assert code == 1013 and "too_many_connections" in reason
    works(strict, speech)
    refused = strict.get("/api/info").json()["live"]["refused"]
    assert refused["too_many_connections"] == 1 and refused["live_too_fast"] == 1


def test_session_over_its_duration_is_closed(strict: TestClient, speech: np.ndarray) -> None:
    # live.max_session_s is 12 s; at 2x (within the speed limit) the 13th second closes it.
    with strict.websocket_connect("/api/live") as ws:
        ws.send_text(config())
        pcm = np.tile(speech[: 4 * SR], 4).tobytes()
        for i in range(0, len(pcm), 6400):
            ws.send_bytes(pcm[i : i + 6400])
            time.sleep(0.1)  # 200 ms of audio per 100 ms
            if i > 13 * SR * 2:
                break
        code, reason = closed_with(ws)
    assert code == 1008 and "live_too_long" in reason


def test_audio_in_flight_after_the_end_is_ignored(fast: TestClient, speech: np.ndarray) -> None:
    """A browser's recorder delivers its last buffers after the page sent the end: they are not
    part of the session, and the session ends normally (found by the browser test under load)."""
    with fast.websocket_connect("/api/live") as ws:
        ws.send_text(config())
        send_pcm(ws, speech[: 4 * SR].tobytes())
        ws.send_text(json.dumps({"is_speaking": False}))
        ws.send_bytes(speech[4 * SR : 4 * SR + 1920].tobytes())
        messages = until_final(ws)
        assert messages[-1]["is_final"] is True and messages[-1]["is_end"] is True
        assert all(m["end_ms"] <= 4000 for m in messages if "end_ms" in m)


# ---- a real server: FunASR's client from PyPI, the token, a client that stops reading ------


@pytest.fixture(scope="module")
def guarded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tiny_model_dir, tmp_path_factory.mktemp("live-ws"), env={
        "ASR_SERVER__API_TOKEN": "s3cret", "ASR_LIVE__PING_INTERVAL_S": "1", "ASR_LIVE__PING_TIMEOUT_S": "2",
        "ASR_LIVE__MAX_SPEED": "1000", "ASR_LIVE__BURST_S": "1000", "ASR_PIPELINE__ITN": "false"})  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


def ws_url(server: LiveServer, path: str = "/api/live") -> str:
    return server.url.replace("http://", "ws://") + path


def test_funasr_client_from_pypi_gets_2pass_and_offline_results(guarded: LiveServer, speech: np.ndarray,
                                                                tmp_path: Path) -> None:
    funasr_client = pytest.importorskip("funasr_client", reason="funasr-client (requirements-test.txt) is needed")
    wav = tmp_path / "three.wav"
    wav.write_bytes(wav_of(speech))
    # FunASR's clients take a URL only: the token goes in the query. (The package's synchronous
    # client deadlocks on its own lock when it closes; its asyncio client is used.)
    url = ws_url(guarded, "/?token=s3cret")

    async def stream() -> list[dict[str, Any]]:
        return [m async for m in funasr_client.async_file_asr_stream(wav, url, mode="2pass", hotwords={"会议": 20},
                                                                      itn=False)]  # fmt: skip

    messages = asyncio.run(asyncio.wait_for(stream(), 120))
    finals = [m for m in messages if m["mode"] == "2pass-offline"]
    assert sum(1 for m in finals if m["text"]) == 3
    assert messages[-1]["is_final"] is True
    merged = funasr_client.merge_messages(messages)
    assert merged["text"] == "".join(m["text"] for m in finals)
    # The client decodes `timestamp` (a JSON string on the wire) and joins them.
    assert merged["timestamp"] == [pair for m in finals for pair in m.get("timestamp", [])]
    assert merged["timestamp"] and all(len(p) == 2 for p in merged["timestamp"])

    api = httpx.post(guarded.url + "/api/transcribe", headers={"Authorization": "Bearer s3cret"},
                     files={"file": ("three.wav", wav.read_bytes())}, data={"hotwords": "会议"}).json()  # fmt: skip

    async def offline() -> list[dict[str, Any]]:
        return [m async for m in funasr_client.async_file_asr_stream(wav, url, mode="offline", hotwords={"会议": 20},
                                                                      itn=False)]  # fmt: skip

    # One answer in mode "offline", as the protocol document shows (the package's merge helpers
    # read only 2pass-offline messages, which FunASR's 2pass server sends in every mode).
    (answer,) = asyncio.run(asyncio.wait_for(offline(), 120))
    assert answer["mode"] == "offline" and answer["is_final"] is True
    assert answer["text"] == api["text"]
    assert answer["timestamp"] == [[t["start_ms"], t["end_ms"]] for t in api["tokens"]]


def test_the_token_is_checked_as_for_http(guarded: LiveServer) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    for url, headers in ((ws_url(guarded), {}), (ws_url(guarded, "/api/live?token=wrong"), {}),
                         (ws_url(guarded, "/"), {"Authorization": "Bearer wrong"})):  # fmt: skip
        with pytest.raises(InvalidStatus) as info:
            connect(url, additional_headers=headers, open_timeout=10).close()
        assert info.value.response.status_code == 401
        assert b"unauthorized" in info.value.response.body
    for url, headers in ((ws_url(guarded, "/api/live?token=s3cret"), {}),
                         (ws_url(guarded), {"Authorization": "Bearer s3cret"})):  # fmt: skip
        with connect(url, additional_headers=headers, open_timeout=10) as ws:
            ws.send(config(mode="offline"))
            ws.send(np.zeros(SR, "<i2").tobytes())
            ws.send(json.dumps({"is_speaking": False}))
            assert json.loads(ws.recv(timeout=60))["is_final"] is True
    assert "s3cret" not in guarded.log()  # query tokens are redacted from the access log


def _raw_connect(server: LiveServer, path: str) -> socket.socket:
    """A WebSocket handshake by hand: this client will stop reading, which no library does."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _frame(opcode: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return bytes([0x80 | opcode]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _close_frame(data: bytes) -> tuple[int, str]:
    """The close frame's code and reason in what a server sent (unmasked frames)."""
    pos = 0
    while pos + 2 <= len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if n == 126:
            n, pos = struct.unpack("!H", data[pos : pos + 2])[0], pos + 2
        elif n == 127:
            n, pos = struct.unpack("!Q", data[pos : pos + 8])[0], pos + 8
        if opcode == 8:
            return struct.unpack("!H", data[pos : pos + 2])[0], data[pos + 2 : pos + n].decode()
        pos += n
    raise AssertionError("no close frame")


def test_a_client_that_stops_reading_is_closed_and_others_go_on(guarded: LiveServer, speech: np.ndarray) -> None:
    sock = _raw_connect(guarded, "/api/live?token=s3cret")
    sock.sendall(_frame(1, config().encode()))
    # Real-time audio, never a byte read: no pong answers the server's pings (every 1 s here).
    started = time.monotonic()
    pcm = speech.tobytes()
    closed_at = None
    for i in range(0, len(pcm), MESSAGE):
        try:
            sock.sendall(_frame(2, pcm[i : i + MESSAGE]))
        except OSError:
            closed_at = time.monotonic() - started
            break
        time.sleep(0.06)
    # Meanwhile another client is served normally.
    from websockets.sync.client import connect

    with connect(ws_url(guarded, "/api/live?token=s3cret"), open_timeout=10) as ws:
        ws.send(config(mode="offline"))
        ws.send(speech[: 2 * SR].tobytes())
        ws.send(json.dumps({"is_speaking": False}))
        assert json.loads(ws.recv(timeout=60))["is_final"] is True
    data = b""
    sock.settimeout(10)
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    code, reason = _close_frame(data)
    assert code == 1011 and "ping" in reason
    assert closed_at is None or closed_at < 20
    assert live_info(httpx.Client(base_url=guarded.url), Authorization="Bearer s3cret")["connections"] == 0


def test_openai_client_streams_segments_then_the_whole_text(live_server: LiveServer, speech: np.ndarray) -> None:
    openai = pytest.importorskip("openai", reason="the openai package is needed for this test")
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key="not-needed", max_retries=0)
    wav = wav_of(speech)
    plain = client.audio.transcriptions.create(model="seaco-paraformer", file=("a.wav", wav), extra_body={"vad": "on"})
    events = list(client.audio.transcriptions.create(model="seaco-paraformer", file=("a.wav", wav), stream=True,
                                                     extra_body={"vad": "on"}))  # fmt: skip
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) == 3 and all(d.delta for d in deltas)
    starts = [d.model_extra["start"] for d in deltas]
    assert starts == sorted(starts)
    assert events[-1].type == "transcript.text.done" and events[-1].text == plain.text
    assert plain.text


# ---- the trained demonstration model: real recognition, punctuation ---------------------------

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo-model"


@pytest.mark.skipif(not (DEMO / "asr" / "model.pt").is_file(), reason="the demonstration model is not in tests/assets")
def test_demo_model_live_finals_equal_api_transcribe_with_punctuation(tmp_path: Path) -> None:
    from asr.web import create_app

    require_espeak()
    rec = recording(SENTENCES[7:9], [1.2], lead_s=0.6)
    speech = np.round(np.clip(rec.audio, -1, 1) * 32767).astype("<i2")
    settings = service_settings(DEMO / "asr", tmp_path / "data", server={"ui": False},
                                longform={"punc_model": str(DEMO / "punc")},
                                live={"max_speed": 1000.0, "burst_s": 1000.0})  # fmt: skip
    with TestClient(create_app(settings)) as client:
        with client.websocket_connect("/api/live") as ws:
            ws.send_text(config(itn=True))
            send_pcm(ws, speech.tobytes(), pace_s=0.004)
            ws.send_text(json.dumps({"is_speaking": False}))
            finals = [m for m in until_final(ws) if m["mode"] == "2pass-offline" and m["text"]]
        assert len(finals) == 2
        for final in finals:
            start, end = final["start_ms"] * SR // 1000, final["end_ms"] * SR // 1000
            alone = client.post("/api/transcribe", files={"file": ("seg.wav", wav_of(speech[start:end]))}).json()
            assert alone["applied"]["punctuation"] is True
            assert final["text"] == alone["text"]
            assert final["text"][-1] in "。？！", final["text"]  # punctuated as a sentence
            assert [s["text"] for s in final["sentences"]] == [s["text"] for s in alone["sentences"]]
