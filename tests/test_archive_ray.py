"""`python -m asr transcribe-archive` on a real local Ray (CPU, the tiny random model): one row per
file, corrupt files as failure rows with the pipeline's own error codes, a rerun that skips what is
written, a manifest, and a worker killed in the middle of its batch whose files are redone once.

(tests/test_archive.py is the service's zip downloads, a different thing.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from audio_fixtures import all_formats

from asr.archive_ray import RESULTS, Recognizer, ResultLog, iter_rows, transcribe_archive
from asr.errors import ASRError
from asr.pipeline.formats import render
from asr.pipeline.options import Options
from asr.pipeline.result import Result
from asr.settings import load_settings

ray = pytest.importorskip("ray", reason='transcribe-archive needs Ray Data: pip install "ray[data]"')
ROOT = Path(__file__).resolve().parents[1]
SECONDS = 1.5
CORRUPT = {
    "bad.mp3": b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40,
    "empty.wav": b"",
    "notes.ogg": "这不是音频文件\n".encode() * 50,
}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (it takes seconds to start on 2 cores). Its workers import
    `asr` from the driver's working directory (this checkout) but not this test module: the
    test actors are local classes, which travel to them by value."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def settings(tiny_model_dir: Path):
    return load_settings(None, engine={"model": str(tiny_model_dir), "device": "cpu", "dtype": "fp32",
                                       "warmup": False}, longform={"punc_model": None})


def _folder(root: Path) -> dict[str, bytes]:
    """Good recordings in three containers (one in a subfolder) and three files that are not."""
    formats = all_formats(SECONDS)
    files = {"a.wav": formats["pcm16_16k.wav"], "sub/b.mp3": formats["stereo44.mp3"],
             "sub/c.ogg": formats["vorbis.ogg"], **CORRUPT}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def _expected_error(settings, engine, path: Path) -> str:
    """The code the pipeline itself raises for this file, in this process."""
    from asr.pipeline.pipeline import transcribe_files

    try:
        transcribe_files(settings, engine, [path])
    except ASRError as exc:
        return exc.code
    raise AssertionError(f"{path} transcribed")


def test_folder_rows_failures_subtitles_and_rerun(local_ray, settings, engine, tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    files = _folder(src)
    summary = transcribe_archive(str(src), out, settings, Options(), formats=["srt", "txt"], batch_size=2,
                                 progress=False)
    rows = list(iter_rows(out))
    assert sorted(r["path"] for r in rows) == sorted(str(src / n) for n in files)  # one row per file
    by_name = {Path(r["path"]).relative_to(src).as_posix(): r for r in rows}
    for name in files:
        row = by_name[name]
        stem = out / Path(name).with_suffix("")
        if name in CORRUPT:
            assert not row["ok"] and row["result"] is None
            assert row["error_code"] == _expected_error(settings, engine, src / name), name
            assert row["error"]
            assert not stem.with_suffix(".srt").exists()
        else:
            assert row["ok"] and row["error_code"] == ""
            result = Result.from_dict(row["result"])
            assert abs(result.duration_s - SECONDS) < 0.05 and row["audio_s"] == result.duration_s
            # subtitle files under the folder's own layout, rendered from the row's Result
            assert stem.with_suffix(".srt").read_text(encoding="utf-8") == render(result, "srt")
            assert stem.with_suffix(".txt").read_text(encoding="utf-8") == render(result, "txt")
    assert (summary.files, summary.transcribed, summary.failed, summary.skipped) == (6, 3, 3, 0)
    assert abs(summary.audio_s - 3 * SECONDS) < 0.1
    assert sum(summary.failures.values()) == 3
    assert "6 files: 3 transcribed, 3 failed" in summary.line()

    # A rerun writes nothing: every path, ok or failed, is already a row (and Ray is not needed).
    before = (out / RESULTS).read_bytes()
    srt_mtime = (out / "a.srt").stat().st_mtime_ns
    again = transcribe_archive(str(src), out, settings, Options(), formats=["srt"], progress=False)
    assert (again.files, again.skipped, again.skipped_failed, again.transcribed, again.failed) == (6, 6, 3, 0, 0)
    assert (out / RESULTS).read_bytes() == before
    assert (out / "a.srt").stat().st_mtime_ns == srt_mtime


def test_manifest_resume_after_a_driver_killed_mid_line(local_ray, settings, tmp_path: Path) -> None:
    """A CSV manifest (relative paths, one missing file); results.jsonl as a killed driver leaves
    it: whole rows for two files and half a line. The rerun keeps the two, drops the half line and
    does the rest, one row each."""
    src, out = tmp_path / "in", tmp_path / "out"
    _folder(src)
    names = ["a.wav", "sub/b.mp3", "sub/c.ogg", "bad.mp3", "missing.wav"]
    manifest = src / "list.csv"
    manifest.write_text("path,speaker\n" + "".join(f"{n},x\n" for n in names), encoding="utf-8")
    out.mkdir()
    kept = [{"path": str(src / "a.wav"), "ok": True, "mark": "earlier run"},
            {"path": str(src / "bad.mp3"), "ok": False, "mark": "earlier run"}]
    (out / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in kept)
                               + json.dumps({"path": str(src / "sub/b.mp3"), "ok": True})[:25], encoding="utf-8")

    summary = transcribe_archive(str(manifest), out, settings, Options(), formats=["txt"], progress=False)
    rows = list(iter_rows(out))
    assert rows[:2] == kept  # untouched
    assert sorted(r["path"] for r in rows) == sorted(str(src / n) for n in names)
    assert (summary.files, summary.skipped, summary.transcribed, summary.failed) == (5, 2, 2, 1)
    missing = next(r for r in rows if r["path"].endswith("missing.wav"))
    assert not missing["ok"] and missing["error_code"]
    # names relative to the folder the manifest's paths share
    assert (out / "sub" / "b.txt").is_file() and not (out / "a.txt").exists()


def test_killed_worker_files_redone_once(local_ray, settings, tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    good = {n: d for n, d in _folder(src).items() if n not in CORRUPT}
    for n in CORRUPT:
        (src / n).unlink()
    marker = tmp_path / "crashed"

    class CrashOnce(Recognizer):
        """A worker that dies (its process exits, as when it is killed or runs out of memory) in the
        middle of its first batch; Ray restarts the actor and retries the batch. (Defined here:
        a local class travels to the workers by value, with `marker`.)"""

        async def _one(self, path, name):
            if not marker.exists():
                marker.write_text(self.worker)
                os._exit(1)
            return await super()._one(path, name)

    summary = transcribe_archive(str(src), out, settings, Options(), batch_size=2, progress=False,
                                 recognizer=CrashOnce)
    assert marker.exists(), "the worker never crashed: the test tested nothing"
    rows = list(iter_rows(out))
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(str(src / n) for n in good)  # every file, exactly once
    assert all(r["ok"] for r in rows)
    crashed = marker.read_text()
    assert all(r["worker"] != crashed for r in rows)  # redone by the restarted actor
    assert summary.transcribed == len(good) and summary.failed == 0


def test_a_file_that_kills_every_worker_is_a_failure_row(local_ray, settings, tmp_path: Path) -> None:
    """Its batch is retried one file at a time, so its batch-mates are transcribed; after
    `max_retries` retries it alone becomes a `worker_crashed` row, and the run finishes."""
    src, out = tmp_path / "in", tmp_path / "out"
    good = {n: d for n, d in _folder(src).items() if n not in CORRUPT}
    for n in CORRUPT:
        (src / n).unlink()
    (src / "poison.wav").write_bytes(good["a.wav"])

    class PoisonFile(Recognizer):
        """A file that kills every worker that opens it (a decoder that crashes in native code, or
        a recording that runs the machine out of memory). Local: it travels to workers by value."""

        async def _one(self, path, name):
            if path.endswith("poison.wav"):
                os._exit(1)
            return await super()._one(path, name)

    summary = transcribe_archive(str(src), out, settings, Options(), batch_size=2, max_retries=1,
                                 progress=False, recognizer=PoisonFile)
    rows = {r["path"]: r for r in iter_rows(out)}
    assert len(rows) == len(list(iter_rows(out))) == len(good) + 1
    assert all(rows[str(src / n)]["ok"] for n in good)
    assert rows[str(src / "poison.wav")]["error_code"] == "worker_crashed"
    assert (summary.transcribed, summary.failed, summary.failures) == (3, 1, {"worker_crashed": 1})
    assert summary.missing == 0 and not (out / ".attempts").exists()


def test_cpu_decode(local_ray, settings, engine, tmp_path: Path) -> None:
    """--cpu-decode: Ray tasks decode, the actor only recognises; the rows are those of the pipeline
    decoding the files itself (texts, durations, error codes)."""
    from asr.pipeline.pipeline import transcribe_files

    src, out = tmp_path / "in", tmp_path / "out"
    files = _folder(src)
    summary = transcribe_archive(str(src), out, settings, Options(), batch_size=3, cpu_decode=True, progress=False)
    rows = {Path(r["path"]).relative_to(src).as_posix(): r for r in iter_rows(out)}
    assert sorted(rows) == sorted(files) and (summary.transcribed, summary.failed) == (3, 3)
    # all small: decoded in another process than the recogniser's (not left to, or fused into, the actor)
    assert all(r["decoded"] and r["decoded"] != r["worker"] for r in rows.values())
    good = [n for n in files if n not in CORRUPT]
    expected = transcribe_files(settings, engine, [src / n for n in good])
    for name, result in zip(good, expected):
        assert rows[name]["result"]["text"] == result.text, name
        assert rows[name]["result"]["duration_ms"] == result.duration_ms
    for name in CORRUPT:
        assert rows[name]["error_code"] == _expected_error(settings, engine, src / name), name


def test_command_line(local_ray, tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    """`python -m asr transcribe-archive` (in this process, on the module's Ray): a text manifest,
    subtitle files, results.parquet, the summary, exit status 1 for failures. Two CPUs for the
    actor: one decoding process beside it (pipeline.decode_processes, sized by actor_settings)."""
    from asr.cli import main

    src, out = tmp_path / "in", tmp_path / "out"
    files = _folder(src)
    manifest = tmp_path / "list.txt"
    manifest.write_text("# recordings\n" + "".join(f"{src / n}\n" for n in files), encoding="utf-8")
    code = main(["transcribe-archive", str(manifest), str(out), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--format", "vtt", "--parquet", "--quiet", "--cpus-per-actor", "2", "--batch-size", "4"])
    assert code == 1  # three files failed
    err = capsys.readouterr().err
    assert "6 files: 3 transcribed, 3 failed" in err and "x real time" in err
    rows = list(iter_rows(out))
    assert len(rows) == 6 and {r["ok"] for r in rows} == {True, False}
    assert (out / "sub" / "b.vtt").read_text(encoding="utf-8").startswith("WEBVTT")
    import pyarrow.parquet as pq

    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["path"] for r in table] == [r["path"] for r in rows]
    assert [json.loads(r["result"]) if r["result"] else None for r in table] == [r["result"] for r in rows]

    assert main(["transcribe-archive", str(manifest), str(out), "--model", str(tiny_model_dir), "--quiet"]) == 0
    assert "6 already done (3 of them failures)" in capsys.readouterr().err

    (tmp_path / "list.json").write_text("[]")
    assert main(["transcribe-archive", str(tmp_path / "list.json"), str(tmp_path / "out2"), "--quiet"]) == 2
    assert "not a folder or a .txt/.lst/.csv/.parquet manifest" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()

    # Decoding tasks with no CPU left beside the actors would wait for ever: refused at the start.
    assert main(["transcribe-archive", str(src), str(tmp_path / "out4"), "--model", str(tiny_model_dir),
                 "--cpu-decode", "--cpus-per-actor", "2", "--quiet"]) == 2
    assert "--cpu-decode needs a CPU beside the actors'" in capsys.readouterr().err

    # A recognizer that cannot start stops the run with its own error, not a Ray traceback.
    missing_model = tmp_path / "no-model"
    assert main(["transcribe-archive", str(src), str(tmp_path / "out3"), "--model", str(missing_model),
                 "--device", "cpu", "--quiet"]) == 2
    assert f"error: Model directory not found: {missing_model}" in capsys.readouterr().err


def test_result_log_writes_a_path_once(tmp_path: Path) -> None:
    log = ResultLog(tmp_path / RESULTS)
    assert log.append({"path": "a", "ok": True})
    assert not log.append({"path": "a", "ok": False})  # a retried batch's row
    log.close()
    assert ResultLog(tmp_path / RESULTS).done == {"a": True}


def test_without_ray_the_command_says_how_to_install(tmp_path: Path) -> None:
    """The service and the other commands never import Ray; this one names the install command."""
    code = ("import sys; sys.modules['ray'] = None\n"
            "from asr.cli import main\n"
            "import asr.service\n"
            "assert 'ray' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            f"sys.exit(main(['transcribe-archive', {str(tmp_path)!r}, {str(tmp_path / 'out')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert 'pip install "ray[data]"' in proc.stderr
