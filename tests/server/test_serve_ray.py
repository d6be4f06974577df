"""`python -m asr serve-ray`: the HTTP API as a Ray Serve application with 2 CPU replicas on a
local Ray (the tiny model), over real HTTP on loopback through Serve's proxy.

The API tests of the plain service (tests/server/test_api.py) run here unchanged against the
Serve app, with a token set; the OpenAI route answers as the plain app does; a burst of requests
reaches both replicas; batch jobs created through either replica are claimed and run exactly once
each (checked in the shared job database: owner and claim count per file); a file claimed by an
owner that stops renewing its lease (it died) is taken over after the lease, never while the
lease is renewed; a replica killed while it holds claims leaves them to the other.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from asr.service.jobs import JobStore

from . import test_api as plain
from .conftest import REPO, free_port, service_settings, wav_bytes

pytest.importorskip("ray.serve", reason='the Serve app needs Ray Serve: pip install "ray[serve]"')

TOKEN = "serve-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEASE_S = 2.0  # the replicas' job lease (renewed every 0.5 s): short, so a dead claim comes back fast


@dataclass
class ServeApp:
    url: str
    data: Path
    deployed: dict[str, Any]

    @property
    def db(self) -> Path:
        return self.data / "jobs.sqlite3"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **{"headers": AUTH, **kwargs})


@pytest.fixture(scope="module")
def serve_app(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeApp]:
    """One local Ray (2 CPUs) and one Serve app with 2 replicas for the module: starting them
    takes most of this module's time. The settings are the in-process apps' of test_api.py (fp32
    tiny model: results equal `shared_engine`'s), plus a token and the short lease."""
    import ray
    from ray import serve

    from asr.serve_ray import deploy

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", _node_ip_address="127.0.0.1")
    data = tmp_path_factory.mktemp("serve") / "data"
    port = free_port()
    settings = service_settings(tiny_model_dir, data, server={"ui": False, "api_token": TOKEN, "port": port,
                                                              "job_lease_s": LEASE_S})  # fmt: skip
    try:
        deployed = deploy(settings, replicas=2)
        yield ServeApp(f"http://127.0.0.1:{port}", data, deployed)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture()
def api(serve_app: ServeApp) -> Iterator[httpx.Client]:
    """What test_api.py's tests call `client`: here the Serve app over HTTP, with the token."""
    with serve_app.client() as c:
        yield c


def _replicas(app: ServeApp, want: int = 2, tries: int = 30) -> dict[str, dict[str, Any]]:
    """Each replica's /api/info, asked in concurrent rounds until `want` different ones answered.

    One request at a time is not enough: with both replicas idle, Serve's router may break the tie
    the same way every time (a CI run saw 60 sequential requests reach one replica); concurrent
    requests give the one in flight a deeper queue, so the next goes to the other."""

    def one(_: int) -> dict[str, Any]:
        with app.client() as c:
            return c.get("/api/info").json()

    seen: dict[str, dict[str, Any]] = {}
    with cf.ThreadPoolExecutor(8) as pool:
        for _ in range(tries):
            for info in pool.map(one, range(8)):
                seen[info["replica"]["id"]] = info
            if len(seen) >= want:
                break
    return seen


def _rows(db: Path, job_id: str) -> list[tuple[int, str, str | None, int]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT idx, status, owner, claims FROM files WHERE job_id=? ORDER BY idx",
                           (job_id,)).fetchall()  # fmt: skip
    finally:
        con.close()


# ---- the command, as users run it (before the module's Ray starts: one Ray at a time) --------


def test_the_command_serves_and_ctrl_c_stops_everything(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`python -m asr serve-ray` with its own local Ray: it answers on the port, and Ctrl-C (SIGINT
    to its process group, as a terminal sends it) stops the replicas and Ray, leaving no process."""
    import signal

    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "asr", "serve-ray", "--config", "cpu", "--model", str(tiny_model_dir),
           "--data-dir", str(tmp_path / "data"), "--port", str(port), "--replicas", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "serving on" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/healthz", timeout=30).json()["status"] == "ok"
        r = httpx.post(url + "/api/transcribe", files={"file": ("a.wav", wav_bytes(1.0))}, timeout=60)
        assert r.status_code == 200 and r.json()["duration_ms"] == 1000, r.text
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(90) == 0, log.read_text(errors="replace")[-3000:]
        time.sleep(1.0)
        left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert not left, f"processes left in the command's group: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---- the plain service's API tests, against the Serve app ----------------------------------


def test_two_replicas_each_a_whole_service(serve_app: ServeApp) -> None:
    assert serve_app.deployed["replicas"] == 2 and serve_app.deployed["gpus_per_replica"] == 0
    infos = _replicas(serve_app)
    assert len(infos) == 2, infos.keys()  # two replicas answer, each with its own scheduler
    for info in infos.values():
        assert info["scheduler"]["max_batch_size"] == 16 and info["replica"]["job_lease_s"] == LEASE_S


@pytest.mark.parametrize("name", ["clip1.wav", "clip.mp3"])
def test_transcribe(api: httpx.Client, shared_engine: Any, audio_dir: Path, name: str) -> None:
    plain.test_transcribe_returns_the_engine_result_with_timings(api, shared_engine, audio_dir, name)


def test_subtitle_and_text_formats(api: httpx.Client, audio_dir: Path) -> None:
    plain.test_subtitle_and_text_formats(api, audio_dir)


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [(plain.CORRUPT, 400, "corrupt_audio"), (b"this is plain text, not audio at all" * 10, 415, "unsupported_format"),
     (b"", 400, "empty_file")],
)  # fmt: skip
def test_bad_audio_is_a_typed_client_error(api: httpx.Client, payload: bytes, status: int, code: str) -> None:
    plain.test_bad_audio_is_a_client_error_with_a_message(api, payload, status, code)


def test_hotword_and_request_errors(api: httpx.Client) -> None:
    plain.test_hotword_and_request_errors(api)


def test_token_is_required_but_for_healthz(serve_app: ServeApp) -> None:
    with serve_app.client(headers={}) as c:
        assert c.get("/healthz").status_code == 200
        for r in (c.post("/api/transcribe", files={"file": ("a.wav", wav_bytes(1.0))}), c.get("/api/info"),
                  c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(1.0))}, data={"model": "x"})):
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
        wrong = c.get("/api/info", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401


def test_openai_route_answers_as_the_plain_app(api: httpx.Client, client: Any) -> None:
    """`client` is the plain service in process (conftest.py, the same engine settings)."""
    data = wav_bytes(2.0, seed=3)
    for fields in ({"response_format": "verbose_json"}, {"response_format": "text"}, {"stream": "true"}):
        answers = []
        for door in (client, api):
            r = door.post("/v1/audio/transcriptions", files={"file": ("s.wav", data)},
                          data={"model": "paraformer", **fields})  # fmt: skip
            assert r.status_code == 200, r.text
            answers.append(r.json() if fields.get("response_format") == "verbose_json" else r.text)
        assert answers[1] == answers[0], fields
    assert api.post("/v1/audio/transcriptions", files={"file": ("x.wav", b"")}, data={"model": "x"}).status_code == 400


def test_a_burst_of_requests_reaches_both_replicas(serve_app: ServeApp) -> None:
    """Serve's router sends each request to the less busy of two replicas: under concurrent
    requests both replicas' schedulers run items."""
    before = {rid: info["scheduler"]["items_run"] for rid, info in _replicas(serve_app).items()}
    clips = [wav_bytes(1.0 + 0.1 * (i % 4), seed=i) for i in range(16)]

    def one(data: bytes) -> int:
        with serve_app.client() as c:
            return c.post("/api/transcribe", files={"file": ("c.wav", data)}).status_code

    with cf.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, clips)) == [200] * len(clips)
    after = {rid: info["scheduler"]["items_run"] for rid, info in _replicas(serve_app).items()}
    assert len(before) == 2 and set(after) == set(before), (before, after)
    ran = {rid: after[rid] - before[rid] for rid in before}
    assert sum(ran.values()) >= len(clips) and all(n > 0 for n in ran.values()), ran


# ---- durable jobs with several replicas ---------------------------------------------------


def test_batch_job_runs_each_file_once(api: httpx.Client, serve_app: ServeApp, shared_engine: Any,
                                       audio_dir: Path) -> None:  # fmt: skip
    """test_api.py's batch test (results, the failed file, the zip download) through the Serve
    app, then the shared database: every file of the job claimed once, by a replica."""
    plain.test_batch_of_ten_with_one_corrupt_file(api, shared_engine, audio_dir)
    owners = set(_replicas(serve_app))
    con = sqlite3.connect(serve_app.db)
    try:
        rows = con.execute("SELECT status, owner, claims FROM files").fetchall()
    finally:
        con.close()
    assert len(rows) >= 10
    assert all(status in ("done", "failed") and owner in owners and claims == 1 for status, owner, claims in rows)


def test_jobs_created_through_both_replicas_run_once_each(serve_app: ServeApp) -> None:
    owners = set(_replicas(serve_app))
    used: set[str] = set()
    def upload(j: int) -> str:
        with serve_app.client() as c:
            r = c.post("/api/batch_async", files=[("files", (f"j{j}-{k}.wav", wav_bytes(0.6 + 0.2 * k, seed=j)))
                                                  for k in range(2)])  # fmt: skip
        assert r.status_code == 202, r.text
        return str(r.json()["job_id"])

    for _ in range(5):  # rounds until jobs ran on both replicas (the router picks the replica of each upload)
        # Concurrent uploads: with both replicas idle the router may send sequential ones to the
        # same replica every time (_replicas says why); one in flight makes the next go elsewhere.
        with cf.ThreadPoolExecutor(6) as pool:
            jobs = list(pool.map(upload, range(6)))
        for job_id in jobs:
            with serve_app.client() as c:  # any replica answers for any job
                state = plain.wait_job(c, job_id)
            assert state["status"] == "done" and state["done"] == 2, state
            rows = _rows(serve_app.db, job_id)
            assert [(status, claims) for _, status, _, claims in rows] == [("done", 1), ("done", 1)], rows
            assert {owner for _, _, owner, _ in rows} <= owners
            used |= {owner for _, _, owner, _ in rows}
        if used == owners:
            break
    assert used == owners, f"jobs ran on {used} only"


def test_a_dead_replicas_claim_is_taken_over_after_its_lease_only(serve_app: ServeApp) -> None:
    """A third owner on the shared database (as a replica would be) claims a file and renews its
    lease: the replicas leave it alone; once it stops renewing (it died), a replica re-queues it
    after the lease and transcribes it; the dead owner can no longer store a result."""
    ghost = JobStore(serve_app.db, serve_app.data, owner="ghost-replica", lease_s=1.0)
    try:
        for _ in range(5):  # a replica polling at that very moment may claim the new file first
            job_id = ghost.create_job([("ghost.wav", wav_bytes(1.0, seed=42))], [])
            task = ghost.claim_next()
            if task is not None and task.job_id == job_id:
                break
        else:
            pytest.fail("the replicas always claimed the file before the test could")
        deadline = time.monotonic() + 3 * LEASE_S  # the owner lives: renewing well within its lease
        while time.monotonic() < deadline:
            assert ghost.renew_leases() == 1
            assert _rows(serve_app.db, job_id) == [(0, "running", "ghost-replica", 1)]
            time.sleep(0.25)
        # The owner dies (no more renewals): after its 1 s lease a replica takes the file.
        with serve_app.client() as c:
            state = plain.wait_job(c, job_id)
        assert state["status"] == "done" and state["files"][0]["result"]["text"] is not None, state
        (_, status, owner, claims), = _rows(serve_app.db, job_id)
        assert status == "done" and owner in set(_replicas(serve_app)) and claims == 2
        assert ghost.finish_file(job_id, 0, {"text": "late"}) is False
    finally:
        ghost.close()


# ---- the command ---------------------------------------------------------------------------


def test_command_line_builds_webui_settings(tiny_model_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from asr.cli import build_parser
    from asr.serve_ray import replica_settings, settings_from_args

    args = build_parser().parse_args(["serve-ray", "--config", "cpu", "--model", str(tiny_model_dir), "--port", "7999",
                                      "--data-dir", str(tmp_path), "--max-batch-size", "4", "--replicas", "3"])
    settings = settings_from_args(args)
    assert (settings.engine.model, settings.engine.max_batch_size, settings.engine.dtype) == (str(tiny_model_dir), 4,
                                                                                             "auto")
    assert (settings.server.port, settings.server.data_dir, args.replicas) == (7999, tmp_path, 3)
    replica = replica_settings(settings, 2)
    assert not replica.server.ui and replica.engine.num_threads == 2 and replica.pipeline.decode_processes == 1
    # Relative paths are the command's: made absolute before they travel to the replicas.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "m").mkdir(parents=True)
    relative = settings_from_args(build_parser().parse_args(["serve-ray", "--data-dir", "d", "--model", "models/m"]))
    replica = replica_settings(relative, 1)
    assert replica.server.data_dir == tmp_path / "d" and replica.engine.model == str(tmp_path / "models" / "m")
    assert replica_settings(settings_from_args(build_parser().parse_args(["serve-ray", "--model", "iic/x"])),
                            1).engine.model == "iic/x"  # a ModelScope id stays one


def test_without_ray_serve_the_command_says_how_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['ray.serve'] = None\n"
            "from asr.cli import main\n"
            "sys.exit(main(['serve-ray', '--data-dir', 'x']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert 'pip install "ray[serve]"' in proc.stderr


def test_live_websocket_through_the_proxy(serve_app: ServeApp) -> None:
    """FunASR's live protocol (offline mode) over Serve's proxy: the final text is /api/transcribe's."""
    import io
    import json

    import soundfile as sf
    from websockets.sync.client import connect

    data = wav_bytes(2.0, seed=5)
    with serve_app.client() as c:
        want = c.post("/api/transcribe", files={"file": ("s.wav", data)}, data={"itn": "off"}).json()["text"]
    pcm = sf.read(io.BytesIO(data), dtype="int16")[0].astype("<i2").tobytes()
    config = {"mode": "offline", "wav_name": "s", "wav_format": "pcm", "audio_fs": 16000, "is_speaking": True,
              "chunk_size": [5, 10, 5], "chunk_interval": 10, "itn": False}  # fmt: skip
    with connect(serve_app.url.replace("http://", "ws://") + "/api/live", open_timeout=30,
                 additional_headers=AUTH) as ws:  # fmt: skip
        ws.send(json.dumps(config))
        ws.send(pcm)
        ws.send(json.dumps({"is_speaking": False}))
        msg = json.loads(ws.recv(timeout=60))
    assert msg["is_final"] and msg["text"] == want


def test_a_killed_replicas_files_are_finished_by_the_other(serve_app: ServeApp) -> None:
    """End to end: a replica is SIGKILLed while it holds claims on a job's files. After the lease
    the other replica re-queues and transcribes them (each claimed a second time, no file a third),
    and the job completes. (Last in the module: Serve starts a new replica meanwhile.)"""
    import signal

    files = [("files", (f"k{i}.wav", wav_bytes(3.0, seed=100 + i))) for i in range(40)]
    with serve_app.client() as c:
        r = c.post("/api/batch_async", files=files)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 30
    while True:  # the replica that received the upload claims the files at once
        running = [row for row in _rows(serve_app.db, job_id) if row[1] == "running"]
        if running:
            break
        assert time.monotonic() < deadline, _rows(serve_app.db, job_id)
        time.sleep(0.01)
    dead = running[0][2]
    assert dead is not None
    os.kill(int(dead.split(":")[1]), signal.SIGKILL)  # the owner id is host:pid:replica
    held = {idx for idx, status, owner, _ in _rows(serve_app.db, job_id) if status == "running" and owner == dead}
    assert held, "the replica finished every file before it was killed: the test tested nothing"
    with serve_app.client() as c:  # any live replica answers
        state = plain.wait_job(c, job_id, timeout_s=120)
    assert state["status"] == "done" and state["done"] == 40, state
    rows = {idx: (status, owner, claims) for idx, status, owner, claims in _rows(serve_app.db, job_id)}
    for idx in held:
        status, owner, claims = rows[idx]
        assert status == "done" and owner != dead and claims == 2, (idx, rows[idx])
    assert all(claims <= 2 for _, _, claims in rows.values())


def test_a_failed_start_names_its_cause() -> None:
    """What `serve-ray` prints when the application does not start: the replica's typed error
    (from Serve's deployment status), else the last line of Ray's text (the proxy's own error)."""
    from asr.serve_ray import _cause

    status = ("Failed to start.\n  File \"asr/engine/model.py\", line 9, in load\n"
              "asr.errors.ModelLoadError: Model directory not found: /m\n")
    assert _cause(RuntimeError("Deploying application asr failed"), status) == "Model directory not found: /m"
    bind = RuntimeError("\x1b[36mray::ProxyActor.ready()\x1b[39m (pid=1)\n  File \"proxy.py\"\n"
                        "RuntimeError: Failed to bind to address '127.0.0.1:7860'.")
    assert _cause(bind) == "RuntimeError: Failed to bind to address '127.0.0.1:7860'."
