"""One recording, every door, the same `Result`: the CLI, /api/transcribe, the OpenAI route
(verbose_json), a batch job and the web UI (a real browser) give the same result JSON, field for
field (all but `processing_ms`), with the default options and with the same explicit options.

A short recording (one clip) and a long one (over `longform.auto_vad_s`: VAD segments) are both
checked, and a two-channel call with the options of issue #13 (a named hotword set with its
corrections, the request's own hotword, hotword_diff, split channels with names). The server is
`webui.py` as users start it; the CLI runs with the same profile and model (and reads the server's
hotword sets from its data directory).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from speech import SENTENCES, recording, require_espeak

from .conftest import REPO, LiveServer
from .test_browser import _open, browser, page  # noqa: F401 - fixtures

SR = 16000
EXPLICIT = {"hotwords": "北京 上海", "vad": "on", "punc": "off"}
# Issue #13's options: the set is created on the server first (with a correction for a character
# the tiny model writes for this call, so the dictionary has something to do).
EXPLAINED = {"hotwords": "北京", "vad": "off", "punc": "off", "hotword_sets": "consistency",
             "hotword_diff": "true", "channels": "split", "channel_names": "坐席,客户"}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_espeak()
    root = tmp_path_factory.mktemp("consistency")
    short = recording(SENTENCES[:2], [0.8], noise=0.002)
    long = recording(SENTENCES * 2, [2.5, 1.0, 3.0], noise=0.002)
    assert len(short.audio) / SR < 45 < len(long.audio) / SR  # either side of longform.auto_vad_s
    # A call: the agent (left) says two sentences, the customer (right) two others, in turns.
    agent = recording(SENTENCES[:2], [4.5], noise=0.002).audio
    customer = recording(SENTENCES[2:4], [4.0], lead_s=3.5, noise=0.002, seed=1).audio
    call = np.zeros((max(len(agent), len(customer)), 2), np.float32)
    call[: len(agent), 0], call[: len(customer), 1] = agent, customer
    paths = {"short": root / "short.wav", "long": root / "long.wav", "call": root / "call.wav"}
    sf.write(paths["short"], short.audio, SR, subtype="PCM_16")
    sf.write(paths["long"], long.audio, SR, subtype="PCM_16")
    sf.write(paths["call"], call, SR, subtype="PCM_16")
    return paths


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    assert result["version"] == 1
    return {k: v for k, v in result.items() if k != "processing_ms"}


def _via_cli(path: Path, tiny_model_dir: Path, out: Path, form: dict[str, str], data_dir: Path) -> dict[str, Any]:
    argv = ["transcribe", str(path), "--config", "cpu", "--model", str(tiny_model_dir), "--format", "json",
            "--output-dir", str(out), "--quiet"]
    if form:
        argv += ["--hotwords", form["hotwords"], "--vad" if form["vad"] == "on" else "--no-vad",
                 "--punc" if form["punc"] == "on" else "--no-punc"]
    if "hotword_sets" in form:
        argv += ["--hotword-set", form["hotword_sets"], "--data-dir", str(data_dir), "--hotword-diff",
                 "--channels", form["channels"], "--channel-names", form["channel_names"]]
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
        data |= {"prompt": form["hotwords"], **{k: v for k, v in form.items() if k != "hotwords"}}
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
    if "hotword_sets" in form:
        pg.locator("#single-hotword-sets label", has_text=form["hotword_sets"]).first.click()
        pg.set_checked("#single-hotword-diff input[type=checkbox]", form["hotword_diff"] == "true")
        pg.check(f'#single-channels input[value="{form["channels"]}"]')
        pg.fill("#single-channel-names textarea, #single-channel-names input", form["channel_names"])
    pg.wait_for_timeout(500)
    pg.click("#single-run")
    pg.wait_for_function(
        "(document.querySelector('#single-result textarea')?.value || '').includes('\"version\"')",
        timeout=120_000,
    )
    return json.loads(pg.input_value("#single-result textarea"))


def _check_openai(verbose: dict[str, Any], result: dict[str, Any]) -> None:
    assert verbose["text"] == result["text"]
    for key in ("hotword_hits", "corrections"):
        assert verbose.get(key, []) == result[key]
    assert verbose.get("hotword_diff") == result["hotword_diff"]
    assert [s.get("speaker") for s in verbose["segments"]] == [s["speaker"] for s in result["sentences"]]
    assert verbose["duration"] == result["duration_ms"] / 1000
    assert [(s["start"], s["end"], s["text"]) for s in verbose["segments"]] == [
        (s["start_ms"] / 1000, s["end_ms"] / 1000, s["text"]) for s in result["sentences"]
    ]
    assert [(w["word"], w["start"], w["end"]) for w in verbose["words"]] == [
        (t["text"], t["start_ms"] / 1000, t["end_ms"] / 1000) for t in result["tokens"]
    ]


def _explained_set(server: LiveServer, path: Path) -> None:
    """The set EXPLAINED names: its words, and a correction for the first character the server
    writes for `path` with them (the words steer recognition, the corrections only rewrite it)."""
    words = ["上海", "会议"]
    httpx.delete(server.url + "/api/hotword_sets/consistency")
    assert httpx.post(server.url + "/api/hotword_sets", json={"name": "consistency", "words": words}).status_code == 201
    text = _via_api(server, path, EXPLAINED)["text"]
    # A Chinese character (ITN may have written digits, and a Latin or digit entry matches whole words).
    first = next((c for c in text if not c.isascii() and c.isalpha() and c != "纠"), None)
    assert first, f"the tiny random-weight model yields Chinese text for this call: {text!r}"
    fix = {first: "纠正"}
    resp = httpx.put(server.url + "/api/hotword_sets/consistency", json={"words": words, "corrections": fix})
    assert resp.status_code == 200


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize(
    ("form", "names"),
    [({}, ("short", "long")), (EXPLICIT, ("short", "long")), (EXPLAINED, ("call",))],
    ids=["defaults", "explicit", "sets-diff-channels"],
)
def test_every_door_gives_the_same_result(
    form: dict[str, str], names: tuple[str, ...], recordings: dict[str, Path], live_server: LiveServer,
    tiny_model_dir: Path, tmp_path: Path, page: Any,  # noqa: F811 - the browser fixture
) -> None:
    paths = [recordings[n] for n in names]
    if "hotword_sets" in form:
        _explained_set(live_server, paths[0])
    # One job per recording: a job's files share engine batches, and the CPU engine's fp32 parts
    # are not exactly independent of a batch's padding (a near-tie token of the random model
    # flipped in a full-suite run when the short recording was batched with the long one).
    jobs = [_via_job(live_server, [path], form)[0] for path in paths]
    data_dir = live_server.log_path.parent / "data"  # start_server's --data-dir
    for path, from_job in zip(paths, jobs, strict=True):
        api = _via_api(live_server, path, form)
        assert api["text"], "the tiny random-weight model yields text for these recordings"
        assert api["applied"]["vad"] is (path.stem == "long" or form.get("vad") == "on")
        if "hotword_sets" in form:
            assert api["applied"]["hotword_sets"][0]["name"] == "consistency" and api["corrections"]
            assert api["applied"]["hotwords"] == ["上海", "会议", "北京"] and api["hotword_diff"] is not None
            assert set(api["speakers"]) == {"坐席", "客户"} and api["applied"]["channels"] == "split"
        want = _comparable(api)
        assert _comparable(_via_cli(path, tiny_model_dir, tmp_path / path.stem, form, data_dir)) == want, "CLI"
        assert _comparable(from_job) == want, "batch job"
        assert _comparable(_via_ui(page, live_server, path, form)) == want, "web UI"
        _check_openai(_via_openai(live_server, path, form), api)
