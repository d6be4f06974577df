"""The command line's file workers (asr/file_workers.py): the pipeline in several processes, all
feeding one engine through one scheduler, with the outputs of the one-process loop; bad files and
a worker that dies fail only their own files."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
from audio_fixtures import all_formats, format_folder

from asr.cli import find_audio_files, main, output_targets
from asr.file_workers import FileWorkers, file_worker_count
from asr.pipeline.options import Options
from asr.settings import load_settings


def _outputs(folder: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*.*")):
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            payload = json.loads(text)
            payload.pop("processing_ms")  # the one figure that is the run's, not the recording's
            out[str(path.relative_to(folder))] = payload
        else:
            out[str(path.relative_to(folder))] = text
    return out


@pytest.mark.slow
def test_workers_write_the_one_process_outputs_and_report_bad_files(tiny_model_dir, tmp_path, capsys) -> None:
    src = tmp_path / "in"
    formats = format_folder(src)
    common = ["transcribe", str(src), "--model", str(tiny_model_dir), "--device", "cpu", "--quiet",
              "--format", "txt", "json", "srt", "--hotwords", "丁七 万丈"]
    codes, errs = [], []
    for workers in (1, 2):
        codes.append(main([*common, "--output-dir", str(tmp_path / f"out{workers}"), "--workers", str(workers)]))
        errs.append(capsys.readouterr().err)
    assert codes == [1, 1]
    for err in errs:
        assert "FAILED " in err and "broken.wav" in err and f"{len(formats)} transcribed, 1 failed" in err
    one, two = _outputs(tmp_path / "out1"), _outputs(tmp_path / "out2")
    assert len(one) == 3 * len(formats) and one == two
    assert all(payload["tokens"] for name, payload in one.items() if name.endswith(".json"))


@pytest.mark.slow
def test_networks_served_by_the_engine_process_give_the_one_process_outputs(
    tiny_model_dir, tmp_path, capsys, monkeypatch
) -> None:
    """`longform.punc_in_engine` and `vad_in_engine`: two workers send their words' ids and their
    recordings' blocks to the batching hub, which runs the punctuation network and Silero's in the
    engine's own process; the outputs are the one-process command's with the networks loaded
    there (Silero through onnxruntime there, PyTorch here: the same segments), and the
    one-process command's with its engine in a process of its own that runs them."""
    from speech import SENTENCES, recording, require_espeak

    from asr.engine.process import EngineProcess

    require_espeak()
    import soundfile as sf

    punc = Path(__file__).parent / "assets" / "demo-model" / "punc"
    src = tmp_path / "in"
    format_folder(src)
    sf.write(src / "speech.wav", recording(SENTENCES[:5], [0.8, 1.2, 0.6, 1.5], lead_s=0.5).audio, 16000)
    command = ["transcribe", str(src), "--model", str(tiny_model_dir), "--device", "cpu", "--quiet", "--format",
               "txt", "json", "srt", "--punc-model", str(punc), "--vad", "--workers", "1"]  # fmt: skip
    assert main([*command, "--output-dir", str(tmp_path / "one")]) == 1  # broken.wav
    with monkeypatch.context() as env:
        for name in ("LONGFORM__PUNC_IN_ENGINE", "LONGFORM__VAD_IN_ENGINE"):
            env.setenv(f"ASR_{name}", "true")
        env.setenv("ASR_ENGINE__PROCESS", "on")
        assert main([*command, "--output-dir", str(tmp_path / "beside")]) == 1
    capsys.readouterr()
    engine_settings = {"model": str(tiny_model_dir), "device": "cpu", "warmup": False, "process": "on"}
    settings = load_settings(None, engine=engine_settings,
                             longform={"punc_model": str(punc), "punc_in_engine": True, "vad_in_engine": True})
    engine = EngineProcess(settings.engine)
    workers = FileWorkers(settings, 2)
    files = find_audio_files([str(src)])
    targets = output_targets(files, argparse.Namespace(inputs=[str(src)], output_dir=str(tmp_path / "two")))
    try:
        workers.start(Options.from_form(vad="on"))

        async def run() -> tuple[list, dict]:
            async with workers.serving(engine) as hub:
                outcomes = await workers.transcribe([(f, targets[f]) for f in files], ["txt", "json", "srt"])
                return outcomes, hub.state()

        outcomes, state = asyncio.run(run())
    finally:
        workers.close()
        engine.close()
    failed = [(Path(o.path).name, o.error) for o in outcomes if o.error is not None]
    assert [name for name, _ in failed] == ["broken.wav"], failed  # reported, and the rest went on
    files = [f for f in files if f.name != "broken.wav"]
    assert state["punctuation"]["served"] and state["punctuation"]["calls"] >= 1
    assert state["vad"]["served"] and state["vad"]["calls"] >= len(files)  # a block at least per file
    one, two = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert len(one) == 3 * len(files) and one == two == _outputs(tmp_path / "beside")
    applied = [p["applied"] for name, p in one.items() if name.endswith(".json")]
    assert all(a["punctuation"] and a["vad"] for a in applied) and len(applied) == len(files)
    assert len(one["speech.json"]["segments"]) >= 3  # the pauses cut it


def test_how_many_workers(monkeypatch, tmp_path) -> None:
    import asr.engine.process
    import asr.runtime

    monkeypatch.setattr(asr.runtime, "usable_cores", lambda: 16)
    small = [tmp_path / f"c{i}.mp3" for i in range(16)]
    for path in small:
        path.write_bytes(b"x" * 1000)
    big = [tmp_path / "a.mp3", tmp_path / "b.mp3"]
    for path in big:
        with path.open("wb") as fh:
            fh.truncate(17 * 1048576)  # sparse: the size is what counts
    auto = load_settings(None)
    assert auto.pipeline.file_workers == -1
    monkeypatch.setattr(asr.engine.process, "wants_process", lambda settings, input_bytes=None: True)
    assert file_worker_count(auto, small) == 4  # a folder of clips, on a GPU
    assert file_worker_count(auto, big) == 4  # two long recordings
    assert file_worker_count(auto, small[:15]) == 1  # few small files: a worker's start costs more
    assert file_worker_count(auto, big[:1]) == 1  # one recording: nothing to share out
    monkeypatch.setattr(asr.runtime, "usable_cores", lambda: 8)
    assert file_worker_count(auto, small) == 2
    monkeypatch.setattr(asr.engine.process, "wants_process", lambda settings, input_bytes=None: False)
    assert file_worker_count(auto, small) == 1  # the engine in the command's process: CPU
    for given, expected in ((0, 1), (1, 1), (3, 3)):
        assert file_worker_count(load_settings(None, pipeline={"file_workers": given}), small) == expected


@pytest.mark.slow
def test_a_worker_that_dies_fails_only_the_files_it_held(engine, tmp_path) -> None:
    """One worker is killed while it holds a recording it cannot finish (a FIFO nobody writes to:
    opening it waits forever); that file fails naming the worker's end, and the other worker
    transcribes the rest."""
    wav = all_formats(1.0)["pcm16_16k.wav"]
    files = [tmp_path / "stuck.wav"]
    os.mkfifo(files[0])
    for i in range(4):
        files.append(tmp_path / f"ok{i}.wav")
        files[-1].write_bytes(wav)
    settings = load_settings(None, engine={"model": engine.settings.model, "device": "cpu", "warmup": False},
                             pipeline={"files_in_flight": 1}, longform={"punc_model": ""})
    workers = FileWorkers(settings, 2)
    try:
        workers.start(Options())

        async def run() -> list:
            async with workers.serving(engine):
                task = asyncio.create_task(workers.transcribe([(f, tmp_path / "out" / f.stem) for f in files],
                                                              ["json"]))
                deadline = time.monotonic() + 120
                while 0 not in workers.held:  # the FIFO's file is handed to a worker first
                    assert time.monotonic() < deadline and not task.done()
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # it opens the FIFO (and waits there)
                os.kill(workers.pids[workers.held[0]], signal.SIGKILL)
                return await asyncio.wait_for(task, 120)

        outcomes = asyncio.run(run())
    finally:
        with contextlib.suppress(OSError):  # nobody may be waiting at the FIFO any more
            os.close(os.open(files[0], os.O_WRONLY | os.O_NONBLOCK))
        workers.close()
    assert outcomes[0].error == f"its worker process stopped (exit code {-signal.SIGKILL})"
    assert [o.error for o in outcomes[1:]] == [None] * 4
    assert all((tmp_path / "out" / f"ok{i}.json").exists() for i in range(4))


def test_the_workers_flag(capsys) -> None:
    from asr.cli import build_parser, build_settings

    parser = build_parser()
    for given, expected in (("auto", -1), ("1", 1), ("4", 4)):
        args = parser.parse_args(["transcribe", "x.wav", "--workers", given])
        assert build_settings(args).pipeline.file_workers == expected
    for bad in ("0", "-5", "two"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["transcribe", "x.wav", "--workers", bad])
        assert exc.value.code == 2 and "expected auto or a number of at least 1" in capsys.readouterr().err
