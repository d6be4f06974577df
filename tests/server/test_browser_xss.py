"""Transcripts and file names are data, never markup: a real browser must not run them.

File names come from the user's disk; transcripts come from the API. Both are made hostile here
(names on disk; transcripts by rewriting the job-status responses the page receives, as a
compromised or buggy server would send them) and the page must show them as text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .conftest import LiveServer
from .test_browser import SHOTS, _open, browser, page  # noqa: F401, F811 - fixtures

HOSTILE_NAMES = ['<img src=x onerror="window.__xss=1">.wav', "<svg onload=window.__xss=2>.wav"]
HOSTILE_TEXTS = ["<img src=x onerror=window.__xss=3>", "<script>window.__xss=4</script>"]


def _hostile_files(audio_dir: Path, tmp_path: Path) -> list[Path]:
    out = []
    for i, name in enumerate(HOSTILE_NAMES):
        dst = tmp_path / name
        shutil.copy(audio_dir / f"clip{i}.wav", dst)
        out.append(dst)
    return out


def _assert_inert(pg: Any, panel: str) -> None:
    assert pg.evaluate("window.__xss") is None, "page ran injected markup"
    assert pg.locator(f"{panel} img, {panel} svg[onload], {panel} script").count() == 0


def test_batch_script_renders_hostile_names_and_transcripts_as_text(
    page: Any,  # noqa: F811 - the fixture imported above
    live_server: LiveServer,
    audio_dir: Path,
    tmp_path: Path,
) -> None:
    def poison(route: Any) -> None:
        resp = route.fetch()
        body = resp.json()
        for i, f in enumerate(body.get("files", [])):
            if f.get("result"):
                f["result"]["text"] = HOSTILE_TEXTS[i % len(HOSTILE_TEXTS)]
        route.fulfill(
            response=resp, body=json.dumps(body), headers={**resp.headers, "content-type": "application/json"}
        )

    page.route("**/api/jobs/*", poison)
    _open(page, live_server.url + "/")
    page.click("#tab-batch-button")
    files = _hostile_files(audio_dir, tmp_path)
    page.set_input_files("#batch-js-files", [str(f) for f in files])
    page.wait_for_selector("#batch-js-count[data-count='2']")
    _assert_inert(page, "#batch-js-picker")
    for name in HOSTILE_NAMES:
        assert name in page.inner_text("#batch-js-list")  # the picked files, listed as text
    page.click("#batch-run")
    page.wait_for_selector("#batch-js-result[data-finished=true]", timeout=90_000)
    _assert_inert(page, "#batch-js-panel")
    table = page.inner_text("#batch-js-table")
    for text in HOSTILE_NAMES + HOSTILE_TEXTS:
        assert text in table, (text, table)  # shown literally
    page.screenshot(path=str(SHOTS / "xss-batch-script.png"), full_page=True)


def test_gradio_batch_table_renders_hostile_names_as_text(
    page: Any,  # noqa: F811 - the fixture imported above
    live_server: LiveServer,
    audio_dir: Path,
    tmp_path: Path,
) -> None:
    _open(page, live_server.url + "/?batch_opt=0")
    page.click("#tab-batch-button")
    files = _hostile_files(audio_dir, tmp_path)
    page.set_input_files("#batch-files input[type=file]", [str(f) for f in files])
    page.wait_for_function("document.querySelectorAll('#batch-files tr, #batch-files .file').length >= 2")
    page.click("#batch-run")
    page.wait_for_selector("#batch-zip a", timeout=90_000)
    _assert_inert(page, "#batch-table")
    _assert_inert(page, "#batch-progress")
    table = page.inner_text("#batch-table")
    for name in HOSTILE_NAMES:  # the names as picked (not Gradio's stored copies), as text
        assert name in table, (name, table)
    page.screenshot(path=str(SHOTS / "xss-batch-gradio.png"), full_page=True)
