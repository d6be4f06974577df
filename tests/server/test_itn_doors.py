"""ITN through the doors, on constructed token sequences (the random-weight test model says no
numbers): an engine stand-in returns a spoken date for every clip, with per-character times, so
the written form, its times and the option's default and overrides can be checked end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from asr.cli import build_parser
from asr.engine.core import Transcript
from asr.pipeline.itn import available
from asr.pipeline.options import Options
from asr.web import create_app

from .conftest import service_settings, wav_bytes

pytestmark = pytest.mark.skipif(not available(), reason="the ITN library (wetext) is not installed")

SPOKEN = "会议定在二零二六年十二月一日"


class SpokenDateEngine:
    """Says SPOKEN for every clip, one character per 100 ms."""

    def transcribe(self, audios: Any, hotwords: Any = None) -> list[Transcript]:
        chars = list(SPOKEN)
        stamps = [(100 * i, 100 * i + 90) for i in range(len(chars))]
        return [Transcript(SPOKEN, chars, list(range(len(chars))), stamps, len(a) / 16000) for a in audios]

    def info(self) -> dict[str, Any]:
        return {"model": "constructed"}


@pytest.fixture()
def api(tmp_path: Path) -> TestClient:
    app = create_app(service_settings(Path("unused"), tmp_path / "data", server={"ui": False}),
                     engine=SpokenDateEngine())
    with TestClient(app) as client:
        yield client


def test_default_writes_digits_and_keeps_the_times(api: TestClient) -> None:
    body = api.post("/api/transcribe", files={"file": ("a.wav", wav_bytes(2.0))}).json()
    assert body["text"] == "会议定在2026年12月1日。" or body["text"] == "会议定在2026年12月1日"
    assert body["applied"]["itn"] is True
    tokens = {t["text"]: (t["start_ms"], t["end_ms"]) for t in body["tokens"]}
    # 二零二六 (characters 4-7) became one token with the first one's start and the last one's end.
    assert tokens["2026"] == (400, 790)
    assert tokens["年"] == (800, 890)  # untouched characters keep their own times
    assert tokens["12"] == (900, 1090) and tokens["1"] == (1200, 1290)


@pytest.mark.parametrize(("route", "field"), [("/api/transcribe", "itn"), ("/v1/audio/transcriptions", "itn")])
def test_itn_off_keeps_what_was_said(api: TestClient, route: str, field: str) -> None:
    data = {field: "off"} | ({"response_format": "verbose_json"} if route.startswith("/v1") else {})
    body = api.post(route, files={"file": ("a.wav", wav_bytes(2.0))}, data=data).json()
    assert body["text"].rstrip("。") == SPOKEN


def test_batch_jobs_carry_the_option(api: TestClient) -> None:
    job_id = api.post("/api/batch_async", files=[("files", ("a.wav", wav_bytes(1.0)))],
                      data={"itn": "off"}).json()["job_id"]
    deadline = time.monotonic() + 30
    while (job := api.get(f"/api/jobs/{job_id}").json())["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    result = job["files"][0]["result"]
    assert result["applied"]["itn"] is False and result["text"].rstrip("。") == SPOKEN


def test_cli_flags_map_onto_the_option() -> None:
    parser = build_parser()
    switch = {None: "auto", True: "on", False: "off"}
    for flags, want in (([], None), (["--itn"], True), (["--no-itn"], False)):
        args = parser.parse_args(["transcribe", "x.wav", *flags])
        assert Options.from_form(itn=switch[args.itn]).itn is want
