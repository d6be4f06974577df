"""Hardening against a real server process on loopback (issue #16): zip downloads, field limits at
every door, URL inputs to the mounted UI, the token in logs and cookies, stored-data permissions,
what the open /healthz tells.

One server for the module, started as users start it, with a token, its own Gradio cache folder
and a sitecustomize (tests/server/nethook) that records every name lookup and outgoing connection
the server makes and refuses any that leaves this machine.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import stat
import threading
import time
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import CORRUPT, REPO, LiveServer, start_server, wav_bytes

TOKEN = "hx-" + "7f3a9c" * 4
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The single-file tab's inputs after the audio and the hotwords (Gradio's API takes them by position):
# timestamps, format, VAD, punctuation, ITN, speakers, their number, channels, channel names, hotword
# sets, hotword_diff.
SINGLE_OPTIONS = [True, "txt", "auto", True, True, False, 0, "mix", "", [], False]
ZIP_FILES = 200  # limits.max_zip_files of this server: the largest zip it serves


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hardening")


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, work: Path) -> Iterator[LiveServer]:
    env = {
        "ASR_SERVER__API_TOKEN": TOKEN,
        "ASR_LIMITS__MAX_ZIP_FILES": str(ZIP_FILES),
        "ASR_LIMITS__MAX_FILES_PER_JOB": str(ZIP_FILES),
        "GRADIO_TEMP_DIR": str(work / "gradio-cache"),
        "PYTHONPATH": f"{Path(__file__).parent / 'nethook'}{os.pathsep}{REPO}",
        "ASR_TEST_NET_LOG": str(work / "net.log"),
    }
    srv = start_server(tiny_model_dir, work, env=env)
    try:
        yield srv
    finally:
        srv.stop()


def _net_calls(work: Path) -> list[dict[str, Any]]:
    path = work / "net.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_done(url: str, job_id: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/api/jobs/{job_id}", params={"results": "false"}, headers=AUTH).json()["status"] != "done":
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.2)


def _batch(url: str, files: list[tuple[str, bytes]]) -> str:
    resp = httpx.post(
        url + "/api/batch_async", files=[("files", f) for f in files], headers=AUTH, timeout=120
    )
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    _wait_done(url, job_id)
    return job_id


# ---- 1. zip downloads ---------------------------------------------------------------------------


def test_zip_downloads_refuse_repeated_ids_and_oversized_sets_and_never_stall_healthz(
    server: LiveServer,
) -> None:
    big = _batch(server.url, [(f"会议{i:03d}.wav", wav_bytes(10.0, seed=i)) for i in range(ZIP_FILES)])
    small = _batch(server.url, [("extra.wav", wav_bytes(1.0, seed=999))])

    # The attack from the issue: one job named 1,000 times in one URL. Refused at once.
    t0 = time.monotonic()
    repeated = httpx.get(
        server.url + "/api/jobs_zip", params={"job_ids": [big] * 1000}, headers=AUTH, timeout=30
    )
    assert repeated.status_code == 400, repeated.text[:300]
    assert repeated.json()["error"]["code"] == "invalid_request"
    assert time.monotonic() - t0 < 5
    twice = httpx.get(server.url + "/api/jobs_zip", params={"job_ids": [small, small]}, headers=AUTH)
    assert twice.status_code == 400
    over = httpx.get(server.url + "/api/jobs_zip", params={"job_ids": [big, small]}, headers=AUTH)
    assert over.status_code == 413 and "limits.max_zip_files" in over.json()["error"]["message"]

    # The largest zip this server allows, read slowly, while /healthz is polled.
    latencies: list[float] = []
    streaming = threading.Event()
    finished = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=10) as client:
            while not finished.is_set():
                t = time.monotonic()
                assert client.get(server.url + "/healthz").status_code == 200
                if streaming.is_set():
                    latencies.append(time.monotonic() - t)
                time.sleep(0.03)

    poller = threading.Thread(target=poll)
    poller.start()
    body = BytesIO()
    try:
        with httpx.stream("GET", f"{server.url}/api/jobs/{big}/download", headers=AUTH, timeout=60) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"] == "application/zip"
            streaming.set()
            for chunk in resp.iter_bytes(16384):
                body.write(chunk)
                time.sleep(0.03)  # a slow client: the server must not hold the loop meanwhile
    finally:
        finished.set()
        poller.join()
    archive = zipfile.ZipFile(body)
    names = archive.namelist()
    assert len(names) == ZIP_FILES * 3 and archive.testzip() is None
    assert names[:3] == ["001_会议000.txt", "001_会议000.srt", "001_会议000.json"]
    assert len(latencies) >= 10, f"only {len(latencies)} health checks while the zip streamed"
    assert max(latencies) < 0.2, sorted(latencies)[-5:]


# ---- 3. the same field limit at every door --------------------------------------------------------


def _raw_post(url: str, path: str, headers: list[str], chunks: Iterator[bytes]) -> tuple[str, int]:
    """POST over a raw socket, stop sending once the server answers; (reply, bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sent = 0
    reply = b""
    try:
        sock.sendall("\r\n".join([f"POST {path} HTTP/1.1", f"Host: {host}", *headers, "", ""]).encode())
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (ConnectionError, TimeoutError):
                break
            sent += len(chunk)
        while True:
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


def _vm_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_hotword_text_over_one_field_is_refused_at_every_door_before_parsing(server: LiveServer) -> None:
    words = "热词 " * 400_000  # 2.8 MB of hotwords
    wav = wav_bytes(1.0)
    for path, data, files in (
        ("/api/transcribe", {"hotwords": words}, {"file": ("a.wav", wav)}),
        ("/api/batch_async", {"hotwords": words}, {"files": ("a.wav", wav)}),
        ("/v1/audio/transcriptions", {"prompt": words, "model": "x"}, {"file": ("a.wav", wav)}),
    ):
        resp = httpx.post(server.url + path, data=data, files=files, headers=AUTH, timeout=60)
        assert resp.status_code == 413, (path, resp.text[:300])
        assert resp.json()["error"]["code"] == "limit_exceeded"

    # Gradio's API: the same words as an event input (a 2.8 MB JSON body)...
    event = json.dumps({"data": [None, words, *SINGLE_OPTIONS]}).encode()
    resp = httpx.post(
        server.url + "/gradio_api/call/transcribe_single", content=event,
        headers={**AUTH, "Content-Type": "application/json"}, timeout=60,
    )  # fmt: skip
    assert resp.status_code == 413, resp.text[:300]
    assert resp.json()["error"]["code"] == "limit_exceeded"

    # ... and the 100 MB string from the issue: refused from its Content-Length, never read.
    pid = server.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak to the current RSS
    before = _vm_kb(pid, "VmRSS")
    size = 100 << 20
    headers = [f"Authorization: Bearer {TOKEN}", "Content-Type: application/json", f"Content-Length: {size}"]
    body = iter([b'{"data": ["'] + [b"x" * 65536] * 1600)
    reply, sent = _raw_post(server.url, "/gradio_api/queue/join", headers, body)
    assert reply.startswith("HTTP/1.1 413"), reply[:300]
    assert sent < 32 << 20
    assert _vm_kb(pid, "VmHWM") - before < 50 * 1024  # kB: nothing of the body was held


# ---- 4. URL inputs to the mounted UI ---------------------------------------------------------------


def test_url_inputs_are_refused_before_any_name_lookup_or_connection(server: LiveServer, work: Path) -> None:
    config = httpx.get(server.url + "/config", headers=AUTH).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "transcribe_single")
    before = len(_net_calls(work))

    def file_ref(path: str) -> dict[str, Any]:
        return {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "a.wav"}

    for url in ("https://asr-probe.invalid/a.wav", "http://93.184.215.14/a.wav", "HTTP://127.0.0.1:9/a.wav"):
        inputs = [file_ref(url), "", *SINGLE_OPTIONS]
        call = httpx.post(server.url + "/gradio_api/call/transcribe_single", json={"data": inputs}, headers=AUTH)
        assert call.status_code == 422, call.text[:300]
        body = call.json()["error"]
        assert body["code"] == "url_refused" and "upload the file itself" in body["message"]
        assert "网址" in body["message"]
        join = httpx.post(
            server.url + "/gradio_api/queue/join",
            json={"data": inputs, "fn_index": fn_index, "session_hash": "hx1", "event_data": None},
            headers=AUTH,
        )
        assert join.status_code == 422, join.text[:300]
        # Gradio's file route would stream the URL through the server.
        for route in (f"/gradio_api/file={url}", f"/file={url}", f"/gradio_api/proxy={url}"):
            assert httpx.get(server.url + route, headers=AUTH).status_code == 403, route

    assert _net_calls(work)[before:] == []  # no lookup, no connection

    # Uploaded files still work: upload, then name the stored path.
    uploaded = httpx.post(
        server.url + "/gradio_api/upload", files={"files": ("ok.wav", wav_bytes(1.0))}, headers=AUTH
    ).json()[0]
    inputs = [file_ref(uploaded), "", *SINGLE_OPTIONS]
    call = httpx.post(server.url + "/gradio_api/call/transcribe_single", json={"data": inputs}, headers=AUTH)
    assert call.status_code == 200, call.text
    stream = httpx.get(
        f"{server.url}/gradio_api/call/transcribe_single/{call.json()['event_id']}", headers=AUTH, timeout=60
    ).text
    assert "event: complete" in stream, stream[:500]


# ---- 5. the token stays out of logs and cookies ------------------------------------------------------


def test_the_token_is_never_logged_nor_kept_in_the_cookie(server: LiveServer) -> None:
    login = httpx.get(server.url + f"/?token={TOKEN}&tab=batch", follow_redirects=False)
    assert login.status_code == 303 and TOKEN not in login.headers["location"]
    cookie = login.cookies["asr_session"]
    assert TOKEN not in cookie and TOKEN not in login.headers["set-cookie"]
    set_cookie = login.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "max-age=" in set_cookie

    assert httpx.get(server.url + "/api/info", cookies={"asr_session": cookie}).status_code == 200
    # The cookie is a session, not a credential for the API, and cannot be forged or edited.
    assert httpx.get(server.url + "/api/info", headers={"Authorization": f"Bearer {cookie}"}).status_code == 401
    forged = cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")
    assert httpx.get(server.url + "/api/info", cookies={"asr_session": forged}).status_code == 401
    issued, nonce, _ = cookie.split(".")
    future = f"{int(issued) + 3600}.{nonce}.x"
    assert httpx.get(server.url + "/api/info", cookies={"asr_session": future}).status_code == 401
    assert httpx.get(server.url + f"/api/info?token={TOKEN}", follow_redirects=False).status_code == 303
    assert httpx.get(server.url + "/api/info?token=wrong-guess").status_code == 401

    time.sleep(0.5)  # the access log is written after the response
    log = server.log()
    assert TOKEN not in log
    assert re.search(r'"GET /\?token=\[redacted\]&tab=batch HTTP/1.1" 303', log), log[-2000:]
    assert "/api/info?token=[redacted] HTTP/1.1" in log


def test_a_browser_without_the_token_is_told_how_to_open_the_ui(server: LiveServer) -> None:
    page = httpx.get(server.url + "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
    assert "/?token=" in page.text and "令牌" in page.text
    api = httpx.get(server.url + "/api/info", headers={"Accept": "application/json"})
    assert api.status_code == 401 and api.json()["error"]["code"] == "unauthorized"
    assert "/?token=" in api.json()["error"]["message"]


# ---- 6. stored data is private -----------------------------------------------------------------------


def test_uploads_results_and_the_job_database_are_private(server: LiveServer, work: Path) -> None:
    job_id = _batch(server.url, [("private.wav", wav_bytes(1.0, seed=3))])
    httpx.post(server.url + "/gradio_api/upload", files={"files": ("ui.wav", wav_bytes(1.0))}, headers=AUTH)
    data = work / "data"
    db = data / "jobs.sqlite3"
    paths = [data, data / "uploads", data / "uploads" / job_id, *sorted((data / "uploads" / job_id).iterdir()),
             db, Path(f"{db}-wal"), Path(f"{db}-shm")]  # fmt: skip
    cache = work / "gradio-cache"
    paths += [p for p in cache.rglob("*")]
    assert any(p.name == "ui.wav" for p in paths)
    too_open = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths if p.stat().st_mode & 0o077}
    assert too_open == {}


# ---- 7. the open /healthz tells nothing about the machine ------------------------------------------------


def test_healthz_discloses_no_paths(server: LiveServer, tiny_model_dir: Path, work: Path) -> None:
    resp = httpx.get(server.url + "/healthz")
    assert resp.status_code == 200
    assert set(resp.json()) == {"status", "queue_depth"}
    for secret in (str(tiny_model_dir), str(work), "/tmp", "/home", "/root"):
        assert secret not in resp.text


# ---- 11 and 14. the log holds our own messages, one line per user error ------------------------------------


def test_server_log_has_no_library_noise_and_one_line_per_user_error(server: LiveServer) -> None:
    bad = httpx.post(server.url + "/api/transcribe", files={"file": ("bad.wav", CORRUPT)}, headers=AUTH)
    assert bad.status_code == 400  # CORRUPT is a WAV (by its magic) whose header is damaged
    uploaded = httpx.post(
        server.url + "/gradio_api/upload", files={"files": ("bad.wav", CORRUPT)}, headers=AUTH
    ).json()[0]
    inputs = [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}, "", *SINGLE_OPTIONS]
    event = httpx.post(server.url + "/gradio_api/call/transcribe_single", json={"data": inputs}, headers=AUTH)
    stream = httpx.get(
        f"{server.url}/gradio_api/call/transcribe_single/{event.json()['event_id']}", headers=AUTH, timeout=60
    ).text
    assert "event: error" in stream
    shown = json.loads(stream.split("data: ", 1)[1].splitlines()[0])["error"]
    assert shown.startswith("音频数据已损坏，无法解码。 The WAV audio file is damaged")  # 中文 first
    time.sleep(0.5)
    log = server.log()
    assert "Traceback" not in log
    for noise in ("Couldn't find ffmpeg", "torchaudio is used", "RuntimeWarning", "sudo apt install"):
        assert noise not in log, noise
    user_errors = [line for line in log.splitlines() if "corrupt_audio" in line]
    # The UI's refusal, in one line; the API's 400 is the access log's line.
    assert len(user_errors) == 1 and "ui transcribe refused: [corrupt_audio]" in user_errors[0], user_errors
