"""The web page and the new options, in a real browser against the live server: the hotword-set
picker (sets the API created, listed when the page opens and when a tab is picked), the
explanation box (hotword hits, corrections and hotword_diff marked exactly where the result says,
hostile words shown as text), and the batch tab sending sets, hotword_diff and split channels with
its jobs, with the page script and through Gradio alone."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import LiveServer
from .test_browser import SHOTS, _open, browser, page  # noqa: F401 - fixtures
from .test_browser_xss import _assert_inert

# Words with no space in them (a space separates hotwords) that would run if put in the page as
# markup: an <svg onload> runs when inserted.
HOSTILE_WORD = "<svg/onload=window.__xss=5>"
HOSTILE_FIX = "<svg/onload=window.__xss=6>"


def _api(server: LiveServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, server.url + path, timeout=120, **kwargs)


def _fresh_set(server: LiveServer, name: str, **body: Any) -> int:
    """The set made anew (its version goes on from a deleted one of the same name)."""
    _api(server, "DELETE", f"/api/hotword_sets/{name}")
    resp = _api(server, "POST", "/api/hotword_sets", json={"name": name, **body})
    assert resp.status_code == 201, resp.text
    return int(resp.json()["version"])


def _tick(pg: Any, group: str, name: str) -> None:
    pg.locator(f"{group} label", has_text=name).first.click()


def test_the_explanation_box_marks_what_the_result_says_and_runs_no_markup(
    page: Any, live_server: LiveServer, audio_dir: Path  # noqa: F811 - fixture
) -> None:
    clip = audio_dir / "clip2.wav"
    form = {"hotword_sets": "ui-explain", "hotword_diff": "true", "vad": "auto", "punc": "auto", "itn": "on"}
    # The set's words steer the recogniser; its corrections only rewrite the result. So the text
    # recognised with the words is known first, and a correction for part of it is added after.
    version = _fresh_set(live_server, "ui-explain", words=[HOSTILE_WORD, HOSTILE_FIX])
    upload = {"file": (clip.name, clip.read_bytes())}
    said = _api(live_server, "POST", "/api/transcribe", files=upload, data=form).json()
    assert len(said["text"]) >= 3, "the tiny random-weight model yields text for this clip"
    wrong = said["text"][:2]
    assert _api(live_server, "PUT", "/api/hotword_sets/ui-explain",
                json={"words": [HOSTILE_WORD, HOSTILE_FIX], "corrections": {wrong: HOSTILE_FIX}}).status_code == 200
    want = _api(live_server, "POST", "/api/transcribe", files=upload, data=form).json()
    assert want["text"].startswith(HOSTILE_FIX) and want["applied"]["hotword_sets"][0]["version"] == version + 1
    assert [h["word"] for h in want["hotword_hits"]][:1] == [HOSTILE_FIX]

    _open(page, live_server.url + "/")
    page.set_input_files("#single-audio input[type=file]", str(clip))
    page.wait_for_timeout(500)
    _tick(page, "#single-hotword-sets", "ui-explain")
    page.check("#single-hotword-diff input[type=checkbox]")
    page.check('#single-format input[value="json"]')
    page.click("#single-run")
    page.wait_for_function("(document.querySelector('#single-result textarea')?.value || '').includes('version')",
                           timeout=120_000)
    shown = json.loads(page.input_value("#single-result textarea"))
    assert {k: v for k, v in shown.items() if k != "processing_ms"} == {
        k: v for k, v in want.items() if k != "processing_ms"}
    page.wait_for_selector("#single-explain .asr-explain")
    _assert_inert(page, "#single-explain")
    box = page.inner_text("#single-explain .asr-explain-text")
    assert HOSTILE_FIX in box  # the corrected text, shown as text
    # Each kind of mark covers exactly the characters the result names (adjacent spans join).
    for cls, spans in (("asr-fix", want["corrections"]), ("asr-hit", want["hotword_hits"]),
                       ("asr-diff", want["hotword_diff"])):
        marked = "".join(page.locator(f"#single-explain .asr-explain-text mark.{cls}").all_inner_texts())
        assert marked == "".join(want["text"][s["start"]:s["end"]] for s in spans), cls
    assert want["corrections"] and want["text"][want["corrections"][0]["start"]:][:len(HOSTILE_FIX)] == HOSTILE_FIX
    rows = page.locator("#single-explain table.asr-diff-table tr").count()
    if want["hotword_diff"]:
        assert rows == len(want["hotword_diff"]) + 1
    else:
        assert page.locator("#single-explain .asr-diff-none").count() == 1
    page.screenshot(path=str(SHOTS / "tab-single-explain.png"), full_page=True)


def _job_after(server: LiveServer, before: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        jobs = _api(server, "GET", "/api/jobs", params={"limit": 20}).json()["jobs"]
        new = [j for j in jobs if j["job_id"] not in before]
        if new and new[0]["status"] == "done":
            return _api(server, "GET", f"/api/jobs/{new[0]['job_id']}").json()
        assert time.monotonic() < deadline, jobs
        time.sleep(0.3)


@pytest.mark.parametrize("script", [True, False], ids=["batch_opt.js", "gradio-alone"])
def test_the_batch_tab_sends_sets_diff_and_channels(
    page: Any, live_server: LiveServer, audio_dir: Path, script: bool  # noqa: F811 - fixture
) -> None:
    first = _fresh_set(live_server, "ui-batch", words=["北京", "上海"])
    _open(page, live_server.url + ("/" if script else "/?batch_opt=0"))
    # A set made after the page opened is listed once the tab is picked.
    later = _fresh_set(live_server, "ui-later", words=["深圳"])
    page.click("#tab-batch-button")
    page.locator("#batch-hotword-sets label", has_text="ui-later").first.wait_for(timeout=10_000)
    _tick(page, "#batch-hotword-sets", "ui-batch")
    _tick(page, "#batch-hotword-sets", "ui-later")
    page.check("#batch-hotword-diff input[type=checkbox]")
    page.click("#batch-long button")  # open the options
    page.check('#batch-channels input[value="split"]')
    page.fill("#batch-channel-names textarea, #batch-channel-names input", "坐席,客户")
    before = {j["job_id"] for j in _api(live_server, "GET", "/api/jobs", params={"limit": 200}).json()["jobs"]}
    wav = str(audio_dir / "clip1.wav")
    if script:
        page.set_input_files("#batch-js-files", wav)
        page.wait_for_selector("#batch-js-count[data-count='1']")
    else:
        page.set_input_files("#batch-files input[type=file]", wav)
        page.wait_for_function("document.querySelectorAll('#batch-files tr, #batch-files .file').length >= 1")
    page.click("#batch-run")
    job = _job_after(live_server, before)
    assert job["hotword_sets"] == [{"name": "ui-batch", "version": first}, {"name": "ui-later", "version": later}]
    result = job["files"][0]["result"]
    assert result["applied"]["hotwords"] == ["北京", "上海", "深圳"]
    assert result["applied"]["channels"] == "split" and result["hotword_diff"] is not None
    assert result["speakers"] and set(result["speakers"]) <= {"坐席"}  # a mono file is one channel: 坐席
