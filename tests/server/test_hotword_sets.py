"""Named hotword sets on the server (/api/hotword_sets) and the new options through every door of
the HTTP service: /api/transcribe, the OpenAI route, batch jobs, GET /api/jobs, and the CLI's
flags. The service is the real app in process with its real SQLite database; the engine is a
stand-in that says known text (the biased text only when it is given the hotword 通义千问), so the
words it was given and what the result says about them can be checked exactly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_channels import LINES, ToneEngine, call
from test_hotword_explain import BIASED, PLAIN

from asr.cli import _resolve_sets, build_parser
from asr.engine.core import Transcript
from asr.errors import HotwordError, OptionsError
from asr.pipeline.options import Options
from asr.pipeline.result import HotwordSetUse
from asr.service.hotword_sets import HotwordSetStore
from asr.settings import LimitSettings, load_settings
from asr.web import create_app

from .conftest import service_settings, wav_bytes

SR = 16000


class SayEngine:
    """Says BIASED for a clip given 通义千问, PLAIN otherwise; records every clip's hotwords.
    `gate` (when set) holds every engine call until it is opened."""

    def __init__(self) -> None:
        self.heard: list[list[str]] = []
        self.gate: threading.Event | None = None

    def transcribe(self, audios: Any, hotwords: Any = None) -> list[Transcript]:
        if self.gate is not None:
            self.gate.wait(30)
        lists = [list(h) for h in hotwords] if hotwords else [[] for _ in audios]
        self.heard += lists
        out = []
        for audio, words in zip(audios, lists):
            text = BIASED if "通义千问" in words else PLAIN
            stamps = [(100 * i, 100 * i + 90) for i in range(len(text))]
            out.append(Transcript(text, list(text), list(range(len(text))), stamps, len(audio) / SR))
        return out

    def info(self) -> dict[str, Any]:
        return {"model": "constructed"}


def _app(data: Path, engine: Any, **settings: Any) -> TestClient:
    overrides = {"server": {"ui": False, **settings.pop("server", {})}, "pipeline": {"itn": False},
                 "longform": {"punc_model": ""}, **settings}
    return TestClient(create_app(service_settings(Path("unused"), data, **overrides), engine=engine))


@pytest.fixture()
def engine() -> SayEngine:
    return SayEngine()


@pytest.fixture()
def api(tmp_path: Path, engine: SayEngine) -> Iterator[TestClient]:
    with _app(tmp_path / "data", engine) as client:
        engine.heard.clear()  # the start-up's warm-up clip
        yield client


def _wait(api: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (job := api.get(f"/api/jobs/{job_id}").json())["status"] != "done":
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


SET = {"name": "客服", "words": ["通义千问", "达摩院"], "corrections": {"写代马": "写代码"}}


# ---- the sets API ------------------------------------------------------------------------------


def test_create_list_replace_delete_with_versions(api: TestClient) -> None:
    made = api.post("/api/hotword_sets", json=SET)
    assert made.status_code == 201, made.text
    assert made.json() | {"created_at": 0, "updated_at": 0} == {
        "name": "客服", "version": 1, "words": ["通义千问", "达摩院"], "corrections": {"写代马": "写代码"},
        "created_at": 0, "updated_at": 0,
    }
    api.post("/api/hotword_sets", json={"name": "tech-2", "words": "深度学习\n大模型"})
    listed = api.get("/api/hotword_sets").json()["sets"]
    assert [(s["name"], s["version"], s["words"], s["corrections"]) for s in listed] == [
        ("tech-2", 1, 2, 0), ("客服", 1, 2, 1),
    ]
    # The same content again changes nothing; new content is the next version.
    same = api.put("/api/hotword_sets/客服", json={"words": SET["words"], "corrections": SET["corrections"]})
    assert same.status_code == 200 and same.json()["version"] == 1
    changed = api.put("/api/hotword_sets/客服", json={"words": ["通义千问"]})
    assert changed.json()["version"] == 2 and changed.json()["corrections"] == {}
    assert api.get("/api/hotword_sets/客服").json()["words"] == ["通义千问"]
    # Deleted, then created again: the versions go on, so (name, version) always means one content.
    assert api.delete("/api/hotword_sets/客服").status_code == 204
    gone = api.get("/api/hotword_sets/客服")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "hotword_set_not_found"
    assert api.post("/api/hotword_sets", json=SET).json()["version"] == 3
    taken = api.post("/api/hotword_sets", json=SET)
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "hotword_set_exists"
    assert api.put("/api/hotword_sets/nope", json={"words": ["x"]}).status_code == 404
    assert api.delete("/api/hotword_sets/nope").status_code == 404


@pytest.mark.parametrize(
    ("body", "setting"),
    [
        ({"name": "big", "words": [f"词{i}" for i in range(6)]}, "limits.max_set_words"),
        ({"name": "long", "words": ["长" * 9]}, "limits.max_hotword_chars"),
        ({"name": "fixes", "corrections": {f"错{i}": f"对{i}" for i in range(4)}}, "limits.max_set_corrections"),
        ({"name": "longfix", "corrections": {"错": "对" * 9}}, "limits.max_hotword_chars"),
    ],
)
def test_limits_are_422_naming_the_setting(tmp_path: Path, body: dict, setting: str) -> None:
    limits = {"max_set_words": 5, "max_hotword_chars": 8, "max_set_corrections": 3}
    with _app(tmp_path / "data", SayEngine(), limits=limits) as api:
        resp = api.post("/api/hotword_sets", json=body)
        assert resp.status_code == 422 and setting in resp.json()["error"]["message"], resp.text
        assert api.get("/api/hotword_sets").json()["sets"] == []  # nothing half-made


def test_the_number_of_sets_and_the_words_a_request_gets_are_limited(tmp_path: Path) -> None:
    with _app(tmp_path / "data", SayEngine(), limits={"max_hotword_sets": 2, "max_hotwords": 3}) as api:
        for name in ("a", "b"):
            made = api.post("/api/hotword_sets", json={"name": name, "words": [f"{name}1", f"{name}2"]})
            assert made.status_code == 201
        third = api.post("/api/hotword_sets", json={"name": "c"})
        assert third.status_code == 422 and third.json()["error"]["code"] == "too_many_hotword_sets"
        assert "limits.max_hotword_sets" in third.json()["error"]["message"]
        both = api.post("/api/transcribe", files={"file": ("a.wav", wav_bytes(1.0))}, data={"hotword_sets": "a,b"})
        assert both.status_code == 422 and "limits.max_hotwords" in both.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [{"name": "../x"}, {"name": ""}, {"name": "-x"}, {"name": "a b"}, {"name": "ok", "extra": 1},
     {"name": "ok", "corrections": {"同": "同"}}, {"name": "ok", "corrections": [["只有一个"]]}],
)
def test_bad_sets_are_refused(api: TestClient, body: dict) -> None:
    resp = api.post("/api/hotword_sets", json=body)
    assert resp.status_code == 422, resp.text


def test_sets_persist_across_a_restart(tmp_path: Path) -> None:
    with _app(tmp_path / "data", SayEngine()) as api:
        api.post("/api/hotword_sets", json=SET)
        api.put("/api/hotword_sets/客服", json={"words": ["通义千问"], "corrections": {"写代马": "写代码"}})
    with _app(tmp_path / "data", SayEngine()) as api:
        kept = api.get("/api/hotword_sets/客服").json()
        assert (kept["version"], kept["words"], kept["corrections"]) == (2, ["通义千问"], {"写代马": "写代码"})


def test_the_sets_api_is_behind_the_token(tmp_path: Path) -> None:
    with _app(tmp_path / "data", SayEngine(), server={"api_token": "s3cret"}) as api:
        for method, url in (("get", "/api/hotword_sets"), ("post", "/api/hotword_sets"),
                            ("get", "/api/hotword_sets/x"), ("put", "/api/hotword_sets/x"),
                            ("delete", "/api/hotword_sets/x"), ("get", "/api/jobs")):
            resp = api.request(method, url, json={"name": "x"} if method in ("post", "put") else None)
            assert resp.status_code == 401, (method, url)
        auth = {"Authorization": "Bearer s3cret"}
        assert api.post("/api/hotword_sets", json=SET, headers=auth).status_code == 201
        assert [s["name"] for s in api.get("/api/hotword_sets", headers=auth).json()["sets"]] == ["客服"]
        assert api.get("/api/jobs", headers=auth).json() == {"jobs": [], "next_cursor": None}


# ---- the doors ---------------------------------------------------------------------------------


def test_api_uses_the_sets_words_and_corrections_and_records_the_version(api: TestClient, engine: SayEngine) -> None:
    api.post("/api/hotword_sets", json=SET)
    body = api.post("/api/transcribe", files={"file": ("a.wav", wav_bytes(1.5))},
                    data={"hotword_sets": "客服", "hotwords": "自己的词"}).json()
    # The set's words first, then the request's own; the engine got exactly those.
    assert engine.heard == [["通义千问", "达摩院", "自己的词"]]
    assert body["applied"]["hotwords"] == ["通义千问", "达摩院", "自己的词"]
    assert body["applied"]["hotword_sets"] == [{"name": "客服", "version": 1}]
    assert body["text"] == BIASED and body["corrections"] == []  # nothing to correct: 写代马 was not said
    assert [(h["word"], h["start"], h["end"]) for h in body["hotword_hits"]] == [("通义千问", 3, 7)]
    # A correction the set carries is applied to what was said.
    api.put("/api/hotword_sets/客服", json={"words": ["达摩院"], "corrections": {"通易千文": "通义千问"}})
    fixed = api.post("/api/transcribe", files={"file": ("a.wav", wav_bytes(1.5))},
                     data={"hotword_sets": "客服"}).json()
    assert fixed["text"] == BIASED and fixed["applied"]["hotword_sets"] == [{"name": "客服", "version": 2}]
    assert [(c["wrong"], c["right"], c["start"], c["end"]) for c in fixed["corrections"]] == [
        ("通易千文", "通义千问", 3, 7)
    ]


def test_words_that_look_like_paths_or_urls_stay_words(api: TestClient, engine: SayEngine) -> None:
    words = ["/etc/passwd", "https://example.com/x.txt", "通义千问"]
    stored = api.post("/api/hotword_sets", json={"name": "odd", "words": words}).json()
    assert stored["words"] == words
    body = api.post("/api/transcribe", files={"file": ("a.wav", wav_bytes(1.0))}, data={"hotword_sets": "odd"}).json()
    assert engine.heard == [words] and body["applied"]["hotwords"] == words  # handed on as text, nothing read


@pytest.mark.parametrize("route", ["/api/transcribe", "/v1/audio/transcriptions", "/api/batch_async"])
def test_an_unknown_set_is_422_at_every_door(api: TestClient, route: str) -> None:
    field = "files" if route == "/api/batch_async" else "file"
    resp = api.post(route, files={field: ("a.wav", wav_bytes(1.0))}, data={"hotword_sets": "没有这个"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "unknown_hotword_set", resp.text
    assert "没有这个" in resp.json()["error"]["message"]


def test_openai_route_takes_the_extension_fields(api: TestClient, engine: SayEngine) -> None:
    api.post("/api/hotword_sets", json=SET)
    body = api.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(1.5))},
                    data={"hotword_sets": "客服", "hotword_diff": "true", "response_format": "verbose_json"}).json()
    assert body["text"] == BIASED
    assert [h["word"] for h in body["hotword_hits"]] == ["通义千问"]
    assert [(d["with"], d["without"]) for d in body["hotword_diff"]] == [("义", "易"), ("问", "文")]
    assert sorted(map(len, engine.heard)) == [0, 2]  # once with the set's words, once without
    plain = api.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(1.5))},
                     data={"response_format": "verbose_json"}).json()
    assert "hotword_hits" not in plain and "hotword_diff" not in plain  # OpenAI's shape when unused


def test_a_job_keeps_the_set_as_it_was_when_the_job_was_accepted(api: TestClient, engine: SayEngine) -> None:
    api.post("/api/hotword_sets", json=SET)
    engine.gate = threading.Event()  # nothing is recognised until the set has changed
    files = [("files", ("a.wav", wav_bytes(1.0))), ("files", ("b.wav", wav_bytes(1.2)))]
    accepted = api.post("/api/batch_async", files=files, data={"hotword_sets": "客服", "hotword_diff": "true"})
    assert accepted.status_code == 202, accepted.text
    assert api.put("/api/hotword_sets/客服", json={"words": ["别的词"]}).json()["version"] == 2
    engine.gate.set()
    job = _wait(api, accepted.json()["job_id"])
    assert job["hotword_sets"] == [{"name": "客服", "version": 1}]
    for f in job["files"]:
        result = f["result"]
        assert result["applied"]["hotword_sets"] == [{"name": "客服", "version": 1}]
        assert result["applied"]["hotwords"] == ["通义千问", "达摩院"] and result["text"] == BIASED
        assert [(d["with"], d["without"]) for d in result["hotword_diff"]] == [("义", "易"), ("问", "文")]
    assert ["别的词"] not in engine.heard


def test_channels_split_through_the_api_and_jobs(tmp_path: Path) -> None:
    data = call(8000, 5.0, [(1, 0.5, 1.6), (0, 2.5, 3.8)])
    with _app(tmp_path / "data", ToneEngine()) as api:
        form = {"channels": "split", "channel_names": "坐席,客户", "vad": "off"}
        srt = api.post("/api/transcribe", files={"file": ("call.wav", data)}, data=form | {"format": "srt"}).text
        assert f"客户: {LINES[1500]}" in srt.split("\n\n")[0] and f"坐席: {LINES[500]}" in srt.split("\n\n")[1]
        body = api.post("/api/transcribe", files={"file": ("call.wav", data)}, data=form).json()
        assert [(s["speaker"], s["text"]) for s in body["sentences"]] == [("客户", LINES[1500]), ("坐席", LINES[500])]
        assert body["applied"]["channels"] == "split"
        job_id = api.post("/api/batch_async", files=[("files", ("call.wav", data))], data=form).json()["job_id"]
        job = _wait(api, job_id)
        assert {k: v for k, v in job["files"][0]["result"].items() if k != "processing_ms"} == {
            k: v for k, v in body.items() if k != "processing_ms"
        }
        verbose = api.post("/v1/audio/transcriptions", files={"file": ("call.wav", data)},
                           data=form | {"response_format": "verbose_json"}).json()
        assert [(s["speaker"], s["text"]) for s in verbose["segments"]] == [("客户", LINES[1500]), ("坐席", LINES[500])]
        bad = api.post("/api/transcribe", files={"file": ("call.wav", data)},
                       data={"channels": "split", "speakers": "true"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_options"


# ---- GET /api/jobs ------------------------------------------------------------------------------


def test_jobs_are_listed_newest_first_a_page_at_a_time(api: TestClient) -> None:
    ids = []
    for i in range(5):
        resp = api.post("/api/batch_async", files=[("files", (f"f{i}.wav", wav_bytes(0.5 + 0.1 * i)))])
        ids.append(resp.json()["job_id"])
    for job_id in ids:
        _wait(api, job_id)
    seen, cursor, pages = [], None, 0
    while True:
        page = api.get("/api/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += page["jobs"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and [j["job_id"] for j in seen] == ids[::-1]  # newest first, each once
    assert [j["first_file"] for j in seen] == [f"f{i}.wav" for i in range(4, -1, -1)]
    assert all(j["status"] == "done" and (j["total"], j["done"], j["pending"]) == (1, 1, 0) for j in seen)
    # A job accepted while paging does not shift the later pages: it comes before the first.
    first = api.get("/api/jobs", params={"limit": 2}).json()
    newer = api.post("/api/batch_async", files=[("files", ("new.wav", wav_bytes(0.5)))]).json()["job_id"]
    second = api.get("/api/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [j["job_id"] for j in second["jobs"]] == ids[2:0:-1]
    assert api.get("/api/jobs", params={"limit": 1}).json()["jobs"][0]["job_id"] == newer
    bad = api.get("/api/jobs", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    assert api.get("/api/jobs", params={"limit": 0}).status_code == 422


# ---- the CLI -----------------------------------------------------------------------------------


def test_cli_flags_map_onto_the_options_and_read_the_servers_sets(tmp_path: Path) -> None:
    args = build_parser().parse_args([
        "transcribe", "x.wav", "--hotword-set", "客服", "--hotword-set", "tech", "--hotword-diff",
        "--channels", "split", "--channel-names", "坐席,客户", "--data-dir", str(tmp_path),
    ])
    options = Options.from_form(hotword_sets=args.hotword_set, hotword_diff=args.hotword_diff,
                                channels=args.channels, channel_names=args.channel_names)
    assert (options.hotword_sets, options.hotword_diff, options.channels, options.channel_names) == (
        ("客服", "tech"), True, "split", ("坐席", "客户"))
    settings = load_settings(None, server={"data_dir": str(tmp_path)})
    with pytest.raises(OptionsError, match="no service database"):
        _resolve_sets(settings, options)
    store = HotwordSetStore(tmp_path / "jobs.sqlite3", LimitSettings())  # what the server writes
    store.create("客服", ["通义千问"], {"通易千文": "通义千问"})
    store.create("tech", ["大模型", "通义千问"])
    store.close()
    resolved = _resolve_sets(settings, options)
    assert resolved.hotwords == ("通义千问", "大模型")
    assert resolved.corrections == (("通易千文", "通义千问"),)
    assert resolved.hotword_sets == (HotwordSetUse("客服", 1), HotwordSetUse("tech", 1))
    with pytest.raises(HotwordError):
        HotwordSetStore(tmp_path / "jobs.sqlite3", LimitSettings(max_hotwords=1)).resolve(options)


def test_listing_jobs_and_changing_sets_need_a_token_once_other_machines_can_connect(
    engine: Any, tmp_path: Path
) -> None:
    """Without a token, job ids are the only secret a job has: a service bound beyond loopback
    refuses to list them (and to let anyone rewrite a shared hotword set); with a token it does."""
    open_settings = service_settings(Path("unused"), tmp_path / "open", server={"host": "0.0.0.0", "ui": False})
    with TestClient(create_app(open_settings, engine=engine)) as c:
        listed = c.get("/api/jobs")
        assert listed.status_code == 403 and listed.json()["error"]["code"] == "token_required"
        assert "server.api_token" in listed.json()["error"]["message"]
        made = c.post("/api/hotword_sets", json={"name": "x", "words": ["达摩院"]})
        assert made.status_code == 403
        assert c.get("/api/hotword_sets").status_code == 200  # reading the sets stays open
    token_settings = service_settings(
        Path("unused"), tmp_path / "token", server={"host": "0.0.0.0", "api_token": "s3cret", "ui": False}
    )
    with TestClient(create_app(token_settings, engine=engine)) as c:
        auth = {"Authorization": "Bearer s3cret"}
        assert c.get("/api/jobs", headers=auth).status_code == 200
        assert c.post("/api/hotword_sets", json={"name": "x", "words": ["达摩院"]}, headers=auth).status_code == 201
