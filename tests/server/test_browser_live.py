"""The 实时识别 (live) tab in a real browser: Debian's chromium with a fake microphone that plays a
WAV file (--use-file-for-fake-audio-capture), against the live server. Partial text appears,
settles into final sentences with times, and the download holds them.

Never runs `playwright install`: it uses /usr/bin/chromium (tests/apt-packages.txt).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from speech import SENTENCES, recording, require_espeak

from .conftest import LiveServer
from .test_browser import CHROMIUM, CHROMIUM_ARGS, SHOTS


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the fake microphone plays (chromium loops it): two sentences, then a long pause."""
    require_espeak()
    rec = recording(SENTENCES[6:8], [1.2, 4.0], lead_s=0.8)
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    sf.write(path, np.clip(rec.audio, -1, 1), 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def live_browser(microphone: Path) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is needed")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (tests/apt-packages.txt)")
    args = [*CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}", "--autoplay-policy=no-user-gesture-required"]
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_live_tab_shows_partials_then_final_sentences_with_times(live_browser: Any, live_server: LiveServer,
                                                                  tmp_path: Path) -> None:
    context = live_browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN",
                                       permissions=["microphone", "clipboard-read", "clipboard-write"])
    page = context.new_page()
    try:
        before = httpx.get(live_server.url + "/api/info").json()["live"]["finals_sent"]
        page.goto(live_server.url + "/")
        page.wait_for_selector("#tab-live-button", timeout=60_000)
        assert page.evaluate("window.__asrLive") is True  # live.js ran through Gradio's head hook
        page.click("#tab-live-button")
        assert page.is_checked("#live-itn")
        page.click("#live-start")
        page.wait_for_selector('#live-status[data-state="listening"]', timeout=30_000)
        # Partial text while the first sentence is spoken, then final sentences.
        page.wait_for_function("Number(document.querySelector('#live-captions').dataset.partials || 0) >= 1",
                               timeout=60_000)
        # Final text for each of the two sentences (a final may hold several lines).
        page.wait_for_function("Number(document.querySelector('#live-captions').dataset.segments || 0) >= 2",
                               timeout=90_000)
        page.click("#live-stop")
        page.wait_for_selector('#live-status[data-state="done"]', timeout=60_000)
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "tab-live.png"), full_page=True)

        lines = page.locator("#live-captions .live-final")
        n = lines.count()
        texts = [lines.nth(i).locator(".live-text").inner_text() for i in range(n)]
        segments = int(page.locator("#live-captions").get_attribute("data-segments"))
        assert n >= segments >= 2 and all(texts), texts
        starts = [int(lines.nth(i).get_attribute("data-start")) for i in range(n)]
        ends = [int(lines.nth(i).get_attribute("data-end")) for i in range(n)]
        assert starts == sorted(starts) and all(s < e for s, e in zip(starts, ends))
        assert re.fullmatch(r"\d\d:\d\d\.\d–\d\d:\d\d\.\d", lines.nth(0).locator(".live-time").inner_text())

        # The server sent these finals (the page shows what came over the WebSocket).
        after = httpx.get(live_server.url + "/api/info").json()["live"]
        assert after["finals_sent"] - before == segments

        with page.expect_download() as info:
            page.click("#live-download")
        saved = tmp_path / "live.txt"
        info.value.save_as(saved)
        rows = saved.read_text("utf-8").splitlines()
        assert [r.split("] ", 1)[1] for r in rows] == texts
        assert all(re.match(r"\[\d\d:\d\d\.\d --> \d\d:\d\d\.\d\] ", r) for r in rows)

        page.click("#live-copy")
        assert page.evaluate("navigator.clipboard.readText()") == "\n".join(texts)
    finally:
        context.close()
