"""The Batch and System tabs in a real browser (Debian's chromium) against the live server
(issue #16 items 8, 9, 10, 15), and /docs offline (item 13)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from .conftest import LiveServer
from .test_browser import SHOTS, _open, browser, page  # noqa: F401, F811 - fixtures


def _files(audio_dir: Path, tmp_path: Path, names: dict[str, str]) -> list[Path]:
    """Copies of the session's audio files under new names (new name -> source name)."""
    out = []
    for name, source in names.items():
        dst = tmp_path / name
        shutil.copy(audio_dir / source, dst)
        out.append(dst)
    return out


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"\d+", css)[:3])


def test_one_click_one_job_files_uploaded_once_one_result_area(
    page: Any,  # noqa: F811 - the fixture imported above
    live_server: LiveServer,
    audio_dir: Path,
    tmp_path: Path,
) -> None:
    requests: list[Any] = []
    answered: list[Any] = []
    page.on("request", lambda r: requests.append(r) if r.method == "POST" else None)
    page.on("requestfinished", lambda r: answered.append(r) if r.method == "POST" else None)
    page.on("requestfailed", lambda r: answered.append(r) if r.method == "POST" else None)

    def posts() -> list[str]:
        return [r.url.removeprefix(live_server.url) for r in requests]
    _open(page, live_server.url + "/")
    page.click("#tab-batch-button")
    # Opening the page and picking the tab ask the server for the hotword sets and stop the System
    # tab's polling (POSTs to run/predict). On a loaded machine they can leave after the files are
    # picked, so wait until the page is quiet: what follows then counts only what picking sends.
    quiet_since, deadline = time.monotonic(), time.monotonic() + 30
    seen = -1
    while (time.monotonic() - quiet_since < 1.0 or not any("/run/predict" in url for url in posts())) and (
        time.monotonic() < deadline
    ):
        if len(requests) != seen or len(answered) < len(requests):
            seen, quiet_since = len(requests), time.monotonic()
        page.wait_for_timeout(100)
    assert len(answered) == len(requests) and any("/run/predict" in url for url in posts()), posts()
    files = _files(audio_dir, tmp_path, {
        "a1.wav": "clip0.wav", "a2.wav": "clip1.wav", "a3.wav": "clip2.wav", "a4.wav": "clip3.wav",
        "a5.mp3": "clip.mp3", "broken.wav": "corrupt.wav",
    })  # fmt: skip
    page.set_input_files("#batch-js-files", [str(f) for f in files])
    page.wait_for_selector("#batch-js-count[data-count='6']")
    selected_at = len(requests)
    page.wait_for_timeout(500)
    # 9. Selecting files uploads nothing: they go up once, to /api/batch_async, on the click.
    assert posts()[selected_at:] == [] and not any("/gradio_api/upload" in url for url in posts())

    page.click("#batch-run")
    page.wait_for_function("document.getElementById('batch-run').getAttribute('aria-disabled') === 'true'")
    # 8. A second click while the batch runs does nothing (it used to reach Gradio's handler,
    # which submitted the same files again as a second job).
    page.click("#batch-run", force=True)
    page.click("#batch-run", force=True)
    page.wait_for_selector("#batch-js-result[data-finished=true]", timeout=90_000)
    page.wait_for_timeout(1000)
    uploads = [r for r in requests if r.url.endswith("/api/batch_async")]
    assert len(uploads) == 2  # 6 files in groups of 4: two requests, one click
    assert not any(url.startswith("/gradio_api/queue") or "/run_batch" in url for url in posts()), posts()
    assert not any("/gradio_api/upload" in url for url in posts())
    # The bytes went up in those two requests: the jobs hold every file, at its size.
    import httpx

    stored = {}
    for request in uploads:
        job = httpx.get(f"{live_server.url}/api/jobs/{request.response().json()['job_id']}").json()
        stored.update({f["name"]: f["size"] for f in job["files"]})
    assert stored == {f.name: f.stat().st_size for f in files}
    assert page.get_attribute("#batch-run", "aria-disabled") == "false"  # usable again

    # 10. One result area: the script's; Gradio's table, progress and zip box are not shown.
    for gradio_area in ("#batch-table", "#batch-zip", "#batch-progress", "#batch-files", "#batch-folder"):
        assert page.locator(gradio_area).is_hidden(), gradio_area
    assert page.locator("table:visible").count() == 1
    summary = page.locator("#batch-js-summary")
    assert (summary.get_attribute("data-done"), summary.get_attribute("data-failed")) == ("5", "1")
    # The failed row stands out; the bar shows failures in their own colour.
    failed = page.locator('#batch-js-table tr[data-status="failed"]')
    done = page.locator('#batch-js-table tr[data-status="done"]').first
    failed_bg = _rgb(failed.evaluate("e => getComputedStyle(e).backgroundColor"))
    assert failed_bg != _rgb(done.evaluate("e => getComputedStyle(e).backgroundColor"))
    assert failed_bg[0] > failed_bg[1] and failed_bg[0] > failed_bg[2]  # reddish
    assert "音频" in failed.locator(".batch-js-text").inner_text()  # 中文 before the English
    segments = page.locator("#batch-js-progress > div")
    widths = {segments.nth(i).get_attribute("class"): segments.nth(i).evaluate("e => e.getBoundingClientRect().width")
              for i in range(segments.count())}  # fmt: skip
    total = page.locator("#batch-js-progress").evaluate("e => e.getBoundingClientRect().width")
    assert abs(widths["failed"] / total - 1 / 6) < 0.02 and abs(widths["done"] / total - 5 / 6) < 0.02
    red = _rgb(page.locator("#batch-js-progress .failed").evaluate("e => getComputedStyle(e).backgroundColor"))
    green = _rgb(page.locator("#batch-js-progress .done").evaluate("e => getComputedStyle(e).backgroundColor"))
    assert red[0] > red[1] and green[1] > green[0]
    # The zip link looks like a button, not plain text, and downloads every result.
    link = page.locator("#batch-js-download")
    style = link.evaluate(
        "e => { const s = getComputedStyle(e); return [s.display, s.backgroundColor, s.textDecorationLine]; }"
    )
    assert style[0] in ("inline-block", "block") and _rgb(style[1]) != (0, 0, 0) and style[2] == "none", style
    with page.expect_download() as download:
        link.click()
    archive = tmp_path / "all.zip"
    download.value.save_as(archive)
    import zipfile

    assert len(zipfile.ZipFile(archive).namelist()) == 5 * 3 + 1
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "tab-batch-one-area.png"), full_page=True)


def test_gradio_batch_path_shows_names_as_picked(
    page: Any,  # noqa: F811 - the fixture imported above
    live_server: LiveServer,
    audio_dir: Path,
    tmp_path: Path,
) -> None:
    _open(page, live_server.url + "/?batch_opt=0")
    page.click("#tab-batch-button")
    names = {"会议 记录(1)!.wav": "clip0.wav", "a$b{c}.wav": "clip1.wav"}
    page.set_input_files("#batch-files input[type=file]", [str(f) for f in _files(audio_dir, tmp_path, names)])
    page.wait_for_function("document.querySelectorAll('#batch-files tr, #batch-files .file').length >= 2")
    page.click("#batch-run")
    page.wait_for_selector("#batch-zip a", timeout=90_000)
    table = page.inner_text("#batch-table")
    for name in names:  # Gradio's stored copies are "会议 记录(1).wav" and "abc.wav"
        assert name in table, table


def _system_info_fns(url: str) -> set[int]:
    import httpx

    config = httpx.get(url + "/config").json()
    summary = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "sys-summary")
    return {d["id"] for d in config["dependencies"] if summary in d["outputs"]}


def test_system_tab_polls_only_while_it_is_showing(
    page: Any,  # noqa: F811 - the fixture imported above
    live_server: LiveServer,
) -> None:
    fns = _system_info_fns(live_server.url)
    polls: list[float] = []

    def on_request(request: Any) -> None:
        if request.method == "POST" and "/gradio_api/" in request.url:
            try:
                fn = json.loads(request.post_data or "{}").get("fn_index")
            except ValueError:
                return
            if fn in fns:
                polls.append(time.monotonic())

    page.on("request", on_request)
    _open(page, live_server.url + "/")
    page.wait_for_timeout(5000)
    assert polls == []  # the single-file tab is showing: nothing asks for system information

    page.click("#tab-system-button")
    page.wait_for_function(
        "(document.querySelector('#sys-summary')?.innerText || '').includes('Queue')", timeout=30_000
    )
    page.wait_for_timeout(4500)
    assert len(polls) >= 3  # once on opening, then every 2 s

    page.click("#tab-batch-button")
    page.wait_for_timeout(1000)  # a tick already on its way may still land
    left_at = len(polls)
    page.wait_for_timeout(5000)
    assert len(polls) == left_at


def test_docs_render_offline(
    page: Any,  # noqa: F811 - the fixture imported above
    live_server: LiveServer,
) -> None:
    elsewhere: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(live_server.url) else elsewhere.append(r.url))
    page.goto(live_server.url + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)  # Swagger UI rendered the operations
    assert "/api/transcribe" in page.inner_text("#swagger-ui")
    assert elsewhere == []
