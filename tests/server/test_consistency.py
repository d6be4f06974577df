"""One recording, every door, the same `Result`: the CLI, /api/transcribe, the OpenAI route
(verbose_json), a batch job and the web UI (a real browser) give the same result JSON, field for
field (all but `processing_ms`), with the default options and with the same explicit options.

A short recording (one clip) and a long one (over `longform.auto_vad_s`: VAD segments) are both
checked. The server is `webui.py` as users start it; the CLI runs with the same profile and model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf
from speech import SENTENCES, recording, require_espeak

from .conftest import REPO, LiveServer
from .test_browser import _open, browser, page  # noqa: F401 - fixtures

SR = 16000
EXPLICIT = {"hotwords": "北京 上海", "vad": "on", "punc": "off"}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_espeak()
    root = tmp_path_factory.mktemp("consistency")
    short = recording(SENTENCES[:2], [0.8], noise=0.002)
    long = recording(SENTENCES * 2, [2.5, 1.0, 3.0], noise=0.002)
    assert len(short.audio) / SR < 45 < len(long.audio) / SR  # either side of longform.auto_vad_s
    paths = {"short": root / "short.wav", "long": root / "long.wav"}
    sf.write(paths["short"], short.audio, SR, subtype="PCM_16")
    sf.write(paths["long"], long.audio, SR, subtype="PCM_16")
    return paths


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    assert result["version"] == 1
    return {k: v for k, v in result.items() if k != "processing_ms"}


def _via_cli(path: Path, tiny_model_dir: Path, out: Path, form: dict[str, str]) -> dict[str, Any]:
    argv = ["transcribe", str(path), "--config", "cpu", "--model", str(tiny_model_dir), "--format", "json",
            "--output-dir", str(out), "--quiet"]
    if form:
        argv += ["--hotwords", form["hotwords"], "--vad" if form["vad"] == "on" else "--no-vad",
                 "--punc" if form["punc"] == "on" else "--no-punc"]
    # A process of its own, as users run it (the browser fixture's driver owns this thread's loop).
    proc = subprocess.run([sys.executable, "-m", "asr", *argv], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / f"{path.stem}.json").read_text(encoding="utf-8"))


def _via_api(server: LiveServer, path: Path, form: dict[str, str]) -> dict[str, Any]:
    resp = httpx.post(server.url + "/api/transcribe", files={"file": (path.name, path.read_bytes())}, data=form,
                      timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _via_openai(server: LiveServer, path: Path, form: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}
    if form:
        data |= {"prompt": form["hotwords"], "vad": form["vad"], "punc": form["punc"]}
    resp = httpx.post(server.url + "/v1/audio/transcriptions", files={"file": (path.name, path.read_bytes())},
                      data=data, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _via_job(server: LiveServer, paths: list[Path], form: dict[str, str]) -> list[dict[str, Any]]:
    resp = httpx.post(server.url + "/api/batch_async",
                      files=[("files", (p.name, p.read_bytes())) for p in paths], data=form, timeout=120)
    assert resp.status_code == 202, resp.text
    deadline = time.monotonic() + 180
    while True:
        job = httpx.get(server.url + f"/api/jobs/{resp.json()['job_id']}").json()
        if job["status"] == "done":
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert [f["status"] for f in job["files"]] == ["done"] * len(paths), job
    return [f["result"] for f in job["files"]]


def _via_ui(pg: Any, server: LiveServer, path: Path, form: dict[str, str]) -> dict[str, Any]:
    _open(pg, server.url + "/?batch_opt=0")
    pg.set_input_files("#single-audio input[type=file]", str(path))
    pg.check('#single-format input[value="json"]')
    if form:
        pg.fill("#single-hotwords textarea", form["hotwords"])
        pg.click("#single-long button")  # open the long-audio options
        pg.check(f'#single-vad input[value="{form["vad"]}"]')
        pg.set_checked("#single-punc input[type=checkbox]", form["punc"] == "on")
    pg.wait_for_timeout(500)
    pg.click("#single-run")
    pg.wait_for_function(
        "(document.querySelector('#single-result textarea')?.value || '').includes('\"version\"')",
        timeout=120_000,
    )
    return json.loads(pg.input_value("#single-result textarea"))


def _check_openai(verbose: dict[str, Any], result: dict[str, Any]) -> None:
    assert verbose["text"] == result["text"]
    assert verbose["duration"] == result["duration_ms"] / 1000
    assert [(s["start"], s["end"], s["text"]) for s in verbose["segments"]] == [
        (s["start_ms"] / 1000, s["end_ms"] / 1000, s["text"]) for s in result["sentences"]
    ]
    assert [(w["word"], w["start"], w["end"]) for w in verbose["words"]] == [
        (t["text"], t["start_ms"] / 1000, t["end_ms"] / 1000) for t in result["tokens"]
    ]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("form", [{}, EXPLICIT], ids=["defaults", "explicit"])
def test_every_door_gives_the_same_result(
    form: dict[str, str], recordings: dict[str, Path], live_server: LiveServer, tiny_model_dir: Path,
    tmp_path: Path, page: Any,  # noqa: F811 - the browser fixture
) -> None:
    paths = [recordings["short"], recordings["long"]]
    jobs = _via_job(live_server, paths, form)
    for path, from_job in zip(paths, jobs, strict=True):
        api = _via_api(live_server, path, form)
        assert api["text"], "the tiny random-weight model yields text for these recordings"
        assert api["applied"]["vad"] is (path.stem == "long" or form.get("vad") == "on")
        want = _comparable(api)
        assert _comparable(_via_cli(path, tiny_model_dir, tmp_path / path.stem, form)) == want, "CLI"
        assert _comparable(from_job) == want, "batch job"
        assert _comparable(_via_ui(page, live_server, path, form)) == want, "web UI"
        _check_openai(_via_openai(live_server, path, form), api)
