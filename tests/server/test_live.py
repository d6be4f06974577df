"""Against a real server process on loopback: the OpenAI client and 32 concurrent requests.

SIGKILL in the middle of a batch job: tests/server/test_durability_live.py."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from .conftest import LiveServer


def test_openai_client_transcribes_through_v1(live_server: LiveServer, audio_dir: Path) -> None:
    openai = pytest.importorskip("openai", reason="the openai package is needed for this test")
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key="not-needed", max_retries=0)
    path = audio_dir / "clip2.wav"
    native = httpx.post(
        live_server.url + "/api/transcribe",
        files={"file": (path.name, path.read_bytes())},
        data={"hotwords": "北京"},
    ).json()
    assert native["text"], "the tiny random-weight model yields text for this clip; the checks below need it"

    with path.open("rb") as fh:
        result = client.audio.transcriptions.create(model="seaco-paraformer", file=fh, prompt="北京")
    assert result.text == native["text"]

    with path.open("rb") as fh:
        text = client.audio.transcriptions.create(
            model="seaco-paraformer", file=fh, prompt="北京", response_format="text"
        )
    assert text.strip() == native["text"]

    with path.open("rb") as fh:
        srt = client.audio.transcriptions.create(model="x", file=fh, prompt="北京", response_format="srt")
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> ", srt)

    with path.open("rb") as fh:
        vtt = client.audio.transcriptions.create(model="x", file=fh, response_format="vtt")
    assert vtt.startswith("WEBVTT")

    with path.open("rb") as fh:
        verbose = client.audio.transcriptions.create(
            model="seaco-paraformer", file=fh, prompt="北京", response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )  # fmt: skip
    assert verbose.text == native["text"]
    assert verbose.duration == pytest.approx(native["duration_ms"] / 1000)
    assert [s.text for s in verbose.segments or []] == [s["text"] for s in native["sentences"]]
    assert [s.start for s in verbose.segments or []] == [s["start_ms"] / 1000 for s in native["sentences"]]
    assert [w.word for w in verbose.words or []] == [t["text"] for t in native["tokens"]]

    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(model="x", file=("bad.wav", b"RIFF\x00\x00garbage"))
    assert info.value.status_code in (400, 415)
    assert "audio" in info.value.message.lower()


def test_32_concurrent_requests_all_succeed_and_match_single_runs(
    live_server: LiveServer, audio_dir: Path
) -> None:
    files = [audio_dir / f"clip{i}.wav" for i in range(5)] + [audio_dir / "clip.mp3", audio_dir / "clip.m4a"]
    hotwords = ["", "北京", "上海 深圳"]

    def batches_run() -> float:
        text = httpx.get(live_server.url + "/metrics").text
        return float(re.search(r"^asr_batch_size_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]

    alone: dict[tuple[str, str], dict] = {}
    for path in files:
        for hw in hotwords:
            resp = httpx.post(
                live_server.url + "/api/transcribe",
                files={"file": (path.name, path.read_bytes())}, data={"hotwords": hw}, timeout=60,
            )  # fmt: skip
            assert resp.status_code == 200, resp.text
            alone[(path.name, hw)] = resp.json()

    jobs = [(files[i % len(files)], hotwords[i % len(hotwords)]) for i in range(32)]
    before = batches_run()

    async def run_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/api/transcribe", files={"file": (p.name, p.read_bytes())}, data={"hotwords": hw}
                    )
                    for p, hw in jobs
                )
            )

    responses = asyncio.run(run_all())
    assert [r.status_code for r in responses] == [200] * 32
    for (path, hw), resp in zip(jobs, responses, strict=True):
        got, want = resp.json(), alone[(path.name, hw)]
        assert got["text"] == want["text"], (path.name, hw)
        assert got["tokens"] == want["tokens"]
    # The 32 requests were merged into fewer engine calls: the web layer does not serialise.
    assert batches_run() - before < 32


def test_server_binds_loopback_and_serves_ui(live_server: LiveServer) -> None:
    assert live_server.url.startswith("http://127.0.0.1:")
    page = httpx.get(live_server.url + "/")
    assert page.status_code == 200
    info = httpx.get(live_server.url + "/api/info").json()
    assert info["scheduler"]["max_batch_size"] == 16  # --max-batch-size reached the scheduler
    assert info["engine"]
