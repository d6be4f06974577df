"""The demonstration model (tests/assets/demo-model) through every door: the command line, the
HTTP API and the web page give the engine's text for held-out speech, and that text is right.
Numbers stay spelled out (ITN off) because the references are spoken forms."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from speech import held_out_speech

from .conftest import REPO, LiveServer, start_server
from .test_browser import _open, browser, page  # noqa: F401  (fixtures)

sys.path.insert(0, str(REPO / "training"))
MODEL_ROOT = REPO / "tests" / "assets" / "demo-model"
ASR_DIR = MODEL_ROOT / "asr"
N_FILES = 12

pytestmark = pytest.mark.skipif(
    not (ASR_DIR / "model.pt").is_file(),
    reason="the demonstration model is not committed yet (tests/assets/demo-model/asr): "
    "run training/gpu_run.sh and training/install_model.py, see docs/demo-model.md",
)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Held-out sentences as 16-bit WAV files (the voices and noise of training/evaluate.py)."""
    from synth import write_wav

    texts = json.loads((MODEL_ROOT / "testset.json").read_text("utf-8"))["cer"][:N_FILES]
    folder = tmp_path_factory.mktemp("spoken")
    for i, (wave, _) in enumerate(held_out_speech(texts)):
        write_wav(folder / f"s{i:02d}.wav", wave)
    return folder, texts


@pytest.fixture(scope="module")
def engine_texts(spoken: tuple[Path, list[str]]) -> list[str]:
    from asr.engine.core import Engine
    from asr.pipeline.audio import decode_audio
    from asr.settings import EngineSettings

    folder, texts = spoken
    engine = Engine.from_settings(EngineSettings(model=str(ASR_DIR), device="cpu", dtype="fp32", warmup=False))
    out = [r.text for r in engine.transcribe([decode_audio(folder / f"s{i:02d}.wav") for i in range(len(texts))])]
    engine.close()
    return out


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # ITN off by default for every door of this server (the page's checkbox starts unticked).
    server = start_server(ASR_DIR, tmp_path_factory.mktemp("demo-live"),
                          env={"ASR_PIPELINE__ITN": "false", "ASR_ENGINE__DTYPE": "fp32"})
    try:
        yield server
    finally:
        server.stop()


def test_engine_text_is_close_to_what_was_said(spoken: tuple[Path, list[str]], engine_texts: list[str]) -> None:
    import evaluate

    # The first demonstration model's level (40% on these 12; random weights: near 100%).
    assert evaluate.cer(spoken[1], engine_texts) <= 50.0


def test_cli_writes_the_engine_text(spoken: tuple[Path, list[str]], engine_texts: list[str], tmp_path: Path) -> None:
    from asr.cli import main

    folder, texts = spoken
    code = main(["transcribe", str(folder), "--model", str(ASR_DIR), "--device", "cpu", "--dtype", "fp32",
                 "--no-vad", "--no-itn", "--format", "json", "--output-dir", str(tmp_path), "--quiet"])
    assert code == 0
    got = [json.loads((tmp_path / f"s{i:02d}.json").read_text("utf-8"))["text"] for i in range(len(texts))]
    assert got == engine_texts


def test_http_api_returns_the_engine_text(spoken: tuple[Path, list[str]], engine_texts: list[str],
                                          demo_server: LiveServer) -> None:
    folder, texts = spoken
    got = []
    for i in range(len(texts)):
        name = f"s{i:02d}.wav"
        resp = httpx.post(demo_server.url + "/api/transcribe", files={"file": (name, (folder / name).read_bytes())},
                          data={"vad": "off", "itn": "off"}, timeout=120)
        assert resp.status_code == 200, resp.text
        got.append(resp.json()["text"])
    assert got == engine_texts


def test_web_page_shows_the_engine_text(spoken: tuple[Path, list[str]], engine_texts: list[str],
                                        demo_server: LiveServer, page: Any) -> None:  # noqa: F811
    folder, _ = spoken
    for i in (0, 1, 2):
        _open(page, demo_server.url + "/")  # a fresh page: the audio box holds one file
        page.set_input_files("#single-audio input[type=file]", str(folder / f"s{i:02d}.wav"))
        page.wait_for_timeout(1000)
        page.click("#single-run")
        page.wait_for_function(
            "(document.querySelector('#single-result textarea')?.value || '') === " + json.dumps(engine_texts[i]),
            timeout=60_000,
        )
        assert page.input_value("#single-result textarea") == engine_texts[i]
