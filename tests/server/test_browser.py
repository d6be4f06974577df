"""A real browser (Debian's chromium driven by playwright) against the live server.

Never runs `playwright install`: it uses /usr/bin/chromium (tests/apt-packages.txt).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, LiveServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SHOTS = REPO / "test-output"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is needed")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (tests/apt-packages.txt)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


def _batch_files(audio_dir: Path, tmp_path: Path) -> list[Path]:
    names = ["clip0.wav", "clip1.wav", "clip2.wav", "clip3.wav", "clip4.wav", "clip.mp3", "clip.m4a", "clip.ogg",
             "corrupt.wav"]
    out = []
    for name in names:
        dst = tmp_path / name
        shutil.copy(audio_dir / name, dst)
        out.append(dst)
    return out


def _open(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#tab-batch-button", timeout=60_000)


def test_batch_tab_uploads_groups_in_parallel_and_shows_every_result(
    page: Any, live_server: LiveServer, audio_dir: Path, tmp_path: Path
) -> None:
    events: list[tuple[str, str, float]] = []
    page.on("request", lambda r: events.append(("request", r.url, time.monotonic())))
    page.on("response", lambda r: events.append(("response", r.url, time.monotonic())))
    _open(page, live_server.url + "/")
    assert page.evaluate("window.__asrBatchOpt") is True  # batch_opt.js ran through Gradio's head hook
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "tab-single.png"), full_page=True)

    page.click("#tab-batch-button")
    files = _batch_files(audio_dir, tmp_path)
    extra = tmp_path / "removed-again.wav"
    shutil.copy(audio_dir / "clip0.wav", extra)
    tenth = tmp_path / "clip5.wav"
    shutil.copy(audio_dir / "clip2.wav", tenth)
    files.append(tenth)
    page.set_input_files("#batch-js-files", [str(f) for f in [*files, extra]])
    page.wait_for_selector('#batch-js-list li[data-name="removed-again.wav"]')
    # A file removed from the list is not uploaded.
    page.click('#batch-js-list li[data-name="removed-again.wav"] button')
    page.wait_for_selector('#batch-js-list li[data-name="removed-again.wav"]', state="detached")
    page.fill("#batch-hotwords textarea", "北京\n上海")
    page.click("#batch-run")
    page.wait_for_selector("#batch-js-result[data-finished=true]", timeout=90_000)

    uploads = [e for e in events if e[1].endswith("/api/batch_async")]
    sent = [t for kind, _, t in uploads if kind == "request"]
    answered = [t for kind, _, t in uploads if kind == "response"]
    assert len(sent) == 3 and len(answered) == 3  # 10 files -> groups of 4, 4 and 2
    assert max(sent) < min(answered)  # all groups were in flight at once

    summary = page.locator("#batch-js-summary")
    assert summary.get_attribute("data-total") == "10"
    assert summary.get_attribute("data-done") == "9" and summary.get_attribute("data-failed") == "1"
    rows = page.locator("#batch-js-table tr[data-status]")
    assert rows.count() == 10
    by_name = {rows.nth(i).get_attribute("data-name"): rows.nth(i) for i in range(10)}
    assert by_name["corrupt.wav"].get_attribute("data-status") == "failed"
    assert by_name["corrupt.wav"].locator(".batch-js-text").inner_text().strip()
    for name in ("clip0.wav", "clip1.wav", "clip2.wav", "clip3.wav", "clip4.wav", "clip5.wav", "clip.mp3",
                 "clip.m4a", "clip.ogg"):
        assert by_name[name].get_attribute("data-status") == "done"

    # The texts shown are the ones the API gives for each file alone.
    import httpx

    for name in ("clip0.wav", "clip.mp3"):
        alone = httpx.post(
            live_server.url + "/api/transcribe",
            files={"file": (name, (audio_dir / name).read_bytes())}, data={"hotwords": "北京\n上海"},
        ).json()  # fmt: skip
        assert by_name[name].locator(".batch-js-text").inner_text() == alone["text"]

    link = page.locator("#batch-js-download")
    with page.expect_download() as dl:
        link.click()
    archive = tmp_path / "all.zip"
    dl.value.save_as(archive)
    import zipfile

    assert len(zipfile.ZipFile(archive).namelist()) == 9 * 3 + 1
    page.screenshot(path=str(SHOTS / "tab-batch.png"), full_page=True)

    page.click("#tab-system-button")
    page.wait_for_function(
        "(document.querySelector('#sys-summary')?.innerText || '').includes('Queue')",
        timeout=30_000,
    )
    assert "cpu" in page.inner_text("#sys-summary").lower()
    page.screenshot(path=str(SHOTS / "tab-system.png"), full_page=True)


def test_batch_tab_works_through_gradio_alone_without_the_script(
    page: Any, live_server: LiveServer, audio_dir: Path, tmp_path: Path
) -> None:
    api_calls: list[str] = []
    page.on("request", lambda r: api_calls.append(r.url) if "/api/batch_async" in r.url else None)
    _open(page, live_server.url + "/?batch_opt=0")
    assert page.evaluate("window.__asrBatchOpt") is None
    page.click("#tab-batch-button")
    files = [audio_dir / "clip0.wav", audio_dir / "clip3.wav", audio_dir / "corrupt.wav"]
    page.set_input_files("#batch-files input[type=file]", [str(f) for f in files])
    # Wait until Gradio has uploaded the files (the component lists them).
    page.wait_for_function("document.querySelectorAll('#batch-files tr, #batch-files .file').length >= 3")
    page.click("#batch-run")
    page.wait_for_selector("#batch-zip a", timeout=90_000)
    progress = page.inner_text("#batch-progress")
    assert "3/3" in progress and "failed 1" in progress
    table = page.inner_text("#batch-table")
    assert "corrupt.wav" in table and "失败 failed" in table and table.count("完成 done") == 2
    assert api_calls == []  # the Gradio handler did the work
    page.screenshot(path=str(SHOTS / "tab-batch-gradio-only.png"), full_page=True)


def test_single_file_tab_shows_text_timings_and_downloads(
    page: Any, live_server: LiveServer, audio_dir: Path
) -> None:
    _open(page, live_server.url + "/")
    page.set_input_files("#single-audio input[type=file]", str(audio_dir / "clip2.wav"))
    page.wait_for_timeout(1000)
    page.fill("#single-hotwords textarea", "北京 上海")
    page.click("#single-run")
    page.wait_for_function(
        "(document.querySelector('#single-stats')?.innerText || '').includes('RTF')",
        timeout=60_000,
    )
    import httpx

    alone = httpx.post(
        live_server.url + "/api/transcribe",
        files={"file": ("clip2.wav", (audio_dir / "clip2.wav").read_bytes())}, data={"hotwords": "北京 上海"},
    ).json()  # fmt: skip
    assert page.input_value("#single-result textarea") == alone["text"]
    assert page.locator("#single-downloads a").count() == 3
    page.screenshot(path=str(SHOTS / "tab-single-result.png"), full_page=True)
