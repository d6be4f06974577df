"""Bad input through the HTTP API: each case gets a clear status and message, and the very next
good request still succeeds with the right result. Real app, real engine (tiny model)."""

from __future__ import annotations

import http.server
import io
import os
import struct
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from asr.pipeline.audio import decode_audio
from asr.web import create_app

from .conftest import service_settings, wav_bytes

GOOD = wav_bytes(1.2, seed=3)


def _wav(x: np.ndarray, rate: int, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    x = x.astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def _lying_wav(seconds: float = 1.0) -> bytes:
    """A 16-bit WAV whose header claims 2^31 samples; only ``seconds`` follow."""
    pcm = (_tone(seconds, 16000) * 32767).astype("<i2").tobytes()
    header = (
        b"RIFF" + struct.pack("<I", 0xFFFFFFF0) + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data" + struct.pack("<I", 2**31 * 2 - 2)
    )  # fmt: skip
    return header + pcm


def _non_finite(value: float) -> bytes:
    x = _tone(1.0, 16000)
    x[500] = value
    return _wav(x, 16000, "FLOAT")


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 4, 4) + b"\x08\x02\x00\x00\x00" + bytes(64)


@pytest.fixture(scope="module")
def api(
    tiny_model_dir: Path, shared_engine: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("bad-input") / "data"
    app = create_app(service_settings(tiny_model_dir, data), engine=shared_engine)
    with TestClient(app) as c:
        c.data_dir = data  # type: ignore[attr-defined]
        yield c


@pytest.fixture(scope="module")
def good_text(shared_engine: Any) -> str:
    return str(shared_engine.transcribe([decode_audio(GOOD)], [[]])[0].text)


def assert_next_good_request_succeeds(api: TestClient, good_text: str) -> None:
    resp = api.post("/api/transcribe", files={"file": ("good.wav", GOOD)})
    assert resp.status_code == 200, resp.text
    assert resp.json()["text"] == good_text


def assert_error(resp: Any, status: int, code: str, *words: str) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code, err
    assert len(err["message"]) > 10, err  # a sentence, not a bare code
    for word in words:
        assert word.lower() in err["message"].lower(), err


REFUSED = [
    ("zero-length", b"", 400, "empty_file", ["empty"]),
    # A WAV (by its magic) that cannot be opened is damaged (400), not a foreign format (415).
    ("truncated-header", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(6), 400, "corrupt_audio", ["damaged"]),
    ("png-named-wav", PNG, 415, None, ["audio"]),
    ("text-named-wav", "这不是音频，只是文字。\n".encode() * 40, 415, "unsupported_format", ["audio"]),
    ("nan-float-wav", _non_finite(float("nan")), 400, "non_finite_audio", ["NaN"]),
    ("inf-float-wav", _non_finite(float("inf")), 400, "non_finite_audio", ["infinite"]),
    ("header-only-wav", _wav(np.zeros(0, np.float32), 16000, "PCM_16"), 400, None, ["sample"]),
]


@pytest.mark.parametrize(
    ("payload", "status", "code", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_undecodable_upload_is_refused_clearly(
    api: TestClient, good_text: str, payload: bytes, status: int, code: str | None, words: list[str]
) -> None:
    resp = api.post("/api/transcribe", files={"file": ("input.wav", payload)})
    body = resp.json()
    assert resp.status_code == status, body
    assert body["error"]["message"] and (code is None or body["error"]["code"] == code), body
    for w in words:
        assert w.lower() in body["error"]["message"].lower()
    # The OpenAI route answers the same way.
    openai_style = api.post("/v1/audio/transcriptions", files={"file": ("input.wav", payload)})
    assert (
        openai_style.status_code == status and openai_style.json()["error"]["code"] == body["error"]["code"]
    )
    assert_next_good_request_succeeds(api, good_text)


ACCEPTED = [
    ("pcm8", lambda: _wav(_tone(1.5, 16000), 16000, "PCM_U8"), 1.5),
    ("pcm24", lambda: _wav(_tone(1.5, 16000), 16000, "PCM_24"), 1.5),
    ("float32", lambda: _wav(_tone(1.5, 16000), 16000, "FLOAT"), 1.5),
    ("8khz", lambda: _wav(_tone(1.5, 8000), 8000, "PCM_16"), 1.5),
    ("44.1khz", lambda: _wav(_tone(1.5, 44100), 44100, "PCM_16"), 1.5),
    ("48khz", lambda: _wav(_tone(1.5, 48000), 48000, "PCM_16"), 1.5),
    ("6-channel", lambda: _wav(_tone(1.5, 16000, channels=6), 16000, "PCM_16"), 1.5),
    ("silence", lambda: _wav(np.zeros(32000, np.float32), 16000, "PCM_16"), 2.0),
    ("header-claims-2^31-samples", lambda: _lying_wav(1.0), 1.0),
]


@pytest.mark.parametrize(("make", "seconds"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_unusual_but_valid_audio_is_transcribed(
    api: TestClient, shared_engine: Any, good_text: str, make: Any, seconds: float
) -> None:
    data = make()
    resp = api.post("/api/transcribe", files={"file": ("input.wav", data)})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["duration_ms"] / 1000 == pytest.approx(seconds, abs=0.01)
    assert body["text"] == shared_engine.transcribe([decode_audio(data)], [[]])[0].text
    assert_next_good_request_succeeds(api, good_text)


def test_request_without_a_body_or_file(api: TestClient, good_text: str) -> None:
    assert_error(api.post("/api/transcribe"), 422, "invalid_request", "file")
    assert_error(api.post("/api/transcribe", data={"hotwords": "北京"}), 422, "invalid_request", "file")
    assert_error(api.post("/api/batch_async"), 422, "invalid_request", "files")
    assert_error(api.post("/v1/audio/transcriptions"), 422, "invalid_request", "file")
    assert_next_good_request_succeeds(api, good_text)


def test_malformed_multipart_body(api: TestClient, good_text: str) -> None:
    garbage = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF'
    resp = api.post(
        "/api/transcribe", content=garbage, headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert resp.status_code in (400, 422), resp.text  # an unterminated form: the file never arrives
    assert resp.json()["error"]["message"]
    no_boundary = api.post("/api/transcribe", content=b"abc", headers={"content-type": "multipart/form-data"})
    assert no_boundary.status_code in (400, 422) and no_boundary.json()["error"]["message"]
    not_a_form = api.post("/api/transcribe", content=GOOD, headers={"content-type": "audio/wav"})
    assert_error(not_a_form, 422, "invalid_request", "file")
    assert_next_good_request_succeeds(api, good_text)


def test_hotword_limits_are_named(api: TestClient, good_text: str) -> None:
    many = "\n".join(f"词{i}" for i in range(10_000))
    assert_error(
        api.post("/api/transcribe", files={"file": ("a.wav", GOOD)}, data={"hotwords": many}),
        422, "invalid_hotwords", "1000",
    )  # fmt: skip
    one_mb_word = "长" * ((1 << 20) // 3)
    assert_error(
        api.post("/api/transcribe", files={"file": ("a.wav", GOOD)}, data={"hotwords": one_mb_word}),
        422, "invalid_hotwords", "32",
    )  # fmt: skip
    one_mb_of_words = " ".join(f"w{i}" for i in range(150_000))[: 1 << 20]  # 1 MB of distinct words
    files = {"file": ("a.wav", GOOD)}
    resp = api.post("/v1/audio/transcriptions", files=files, data={"prompt": one_mb_of_words})
    assert_error(resp, 422, "invalid_hotwords", "limit")
    over_a_megabyte = "词 " * (1 << 20)
    assert_error(
        api.post("/api/transcribe", files={"file": ("a.wav", GOOD)}, data={"hotwords": over_a_megabyte}),
        413, "limit_exceeded", "1 MB",
    )  # fmt: skip
    assert_next_good_request_succeeds(api, good_text)


@pytest.mark.parametrize(
    "job_id", ["not-a-job", "A" * 22, "%2E%2E%2Fjobs.sqlite3", "..%2F..%2Fuploads", "x" * 5000]
)
def test_unknown_job_ids_are_404(api: TestClient, job_id: str) -> None:
    for suffix in ("", "/download"):
        resp = api.get(f"/api/jobs/{job_id}{suffix}")
        assert resp.status_code == 404, resp.text
        body = resp.json()
        # Our own 404 for an id that matches the route; Gradio's for one whose "/" (from %2F) makes
        # it a different path. Either way nothing of the data directory comes back.
        assert body.get("error", {}).get("message") or body.get("detail"), body
        assert "SQLite" not in resp.text
    assert api.get("/api/jobs_zip", params={"job_ids": [job_id]}).status_code == 404


# ---- hotwords are words: never a path to read or a URL to fetch ---------------------------------

_OPENED: list[str] = []
_WATCHED: set[str] = set()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        name = os.fsdecode(args[0])
        if name in _WATCHED or os.path.basename(name) in {os.path.basename(w) for w in _WATCHED}:
            _OPENED.append(name)


sys.addaudithook(_audit)  # hooks cannot be removed; this one only looks at watched names


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.hits.append(self.path)
        body = "北京\n上海\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_hotwords_naming_a_file_or_url_are_only_words(api: TestClient, shared_engine: Any) -> None:
    fd, name = tempfile.mkstemp(prefix="hw", suffix=".txt", dir="/tmp")  # short: fits 32 characters
    os.write(fd, "北京\n上海\n深圳\n".encode())
    os.close(fd)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/h.txt"
    _WATCHED.add(name)
    try:
        assert len(name) <= 32 and len(url) <= 32
        for route, field in (("/api/transcribe", "hotwords"), ("/v1/audio/transcriptions", "prompt")):
            for words in (name, url, f"{name}\n{url}"):
                resp = api.post(route, files={"file": ("a.wav", GOOD)}, data={field: words})
                assert resp.status_code == 200, resp.text
        body = api.post("/api/transcribe", files={"file": ("a.wav", GOOD)}, data={"hotwords": name}).json()
        assert body["applied"]["hotwords"] == [name]
        # The same text as the engine gives for the literal word, which is not what the file's
        # contents would give if it were read as a hotword list.
        audio = decode_audio(GOOD)
        assert body["text"] == shared_engine.transcribe([audio], [[name]])[0].text
        assert _OPENED == [], f"the server opened the hotword path: {_OPENED}"
        assert _Recorder.hits == [], f"the server fetched the hotword URL: {_Recorder.hits}"
        # The recorder does work: a real fetch is seen.
        import urllib.request

        urllib.request.urlopen(url, timeout=5).read()
        assert _Recorder.hits == ["/h.txt"]
    finally:
        _WATCHED.discard(name)
        server.shutdown()
        os.unlink(name)


# ---- client file names ----------------------------------------------------------------------------


def _multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"b0undary") -> tuple[bytes, str]:
    """A multipart body with raw (unescaped) file names: NUL bytes and all."""
    out = b""
    for filename, data in parts:
        out += (
            b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"files\"; filename=\""
            + filename + b"\"\r\nContent-Type: audio/wav\r\n\r\n" + data + b"\r\n"
        )  # fmt: skip
    out += b"--" + boundary + b"--\r\n"
    return out, f"multipart/form-data; boundary={boundary.decode()}"


def test_hostile_file_names_are_stored_under_generated_names(api: TestClient, tmp_path: Path) -> None:
    data_dir: Path = api.data_dir  # type: ignore[attr-defined]
    escape_target = data_dir.parent / "escaped.wav"
    names = [
        b"../../escaped.wav",
        os.fsencode(escape_target),  # an absolute path
        b"a\x00b.wav",
        b"n" * 300 + b".wav",
        b"<img src=x onerror=alert(1)>.wav",
        "../中文\\..\\x.wav".encode(),
    ]
    body, ctype = _multipart([(n, wav_bytes(0.6, seed=i)) for i, n in enumerate(names)])
    before = {p for p in data_dir.parent.rglob("*")}
    resp = api.post("/api/batch_async", content=body, headers={"content-type": ctype})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    stored = sorted(p.name for p in (data_dir / "uploads" / job_id).iterdir())
    assert stored == [f"{i:05d}.upload" for i in range(len(names))]
    # Nothing appeared outside the data directory, and nothing inside it but the job's files.
    created = {p for p in data_dir.parent.rglob("*")} - before
    assert all(data_dir in p.parents for p in created), created
    assert not escape_target.exists()

    import time

    deadline = time.monotonic() + 30
    while (job := api.get(f"/api/jobs/{job_id}").json())["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    shown = [f["name"] for f in job["files"]]
    assert shown[0] == "../../escaped.wav" and shown[1] == str(escape_target)
    assert shown[2] == "ab.wav"  # control characters removed from the display name
    assert len(shown[3]) == 255 and shown[3].endswith("…")
    assert all(f["status"] == "done" for f in job["files"]), job

    archive = zipfile.ZipFile(io.BytesIO(api.get(f"/api/jobs/{job_id}/download").content))
    for entry in archive.namelist():
        assert "/" not in entry and "\\" not in entry and not entry.startswith("."), entry
        assert "\x00" not in entry and len(entry) < 100 and "<" not in entry


def test_too_many_files_in_one_job(tiny_model_dir: Path, shared_engine: Any, tmp_path: Path) -> None:
    settings = service_settings(tiny_model_dir, tmp_path / "data", limits={"max_files_per_job": 3})
    with TestClient(create_app(settings, engine=shared_engine)) as c:
        files = [("files", (f"{i}.wav", GOOD)) for i in range(4)]
        assert_error(c.post("/api/batch_async", files=files), 413, "limit_exceeded", "max_files_per_job")
        assert list((tmp_path / "data" / "uploads").iterdir()) == []  # nothing kept of a refused job
        assert c.post("/api/batch_async", files=files[:3]).status_code == 202
