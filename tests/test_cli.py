from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from audio_fixtures import all_formats, format_folder

from asr.cli import main

SRT_CUE = re.compile(r"^(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n(.+)$", re.S)


def _ms(clock: str) -> int:
    h, m, rest = clock.replace(".", ",").split(":")
    s, ms = rest.split(",")
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)


def check_srt(text: str) -> list[tuple[int, int, str]]:
    """Parse an SRT file strictly: numbering, ordering, no overlaps, non-empty text."""
    cues = []
    for number, block in enumerate(text.strip().split("\n\n"), 1):
        match = SRT_CUE.match(block)
        assert match, block
        assert int(match[1]) == number
        start, end = _ms(match[2]), _ms(match[3])
        assert start < end
        assert not cues or cues[-1][1] <= start
        assert match[4].strip()
        cues.append((start, end, match[4]))
    return cues


def test_folder_with_a_corrupt_file(tiny_model_dir, tmp_path, capsys) -> None:
    src = tmp_path / "in"
    formats = format_folder(src)
    out = tmp_path / "out"
    code = main(
        [
            "transcribe",
            str(src),
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--format",
            "txt",
            "json",
            "srt",
            "vtt",
            "--output-dir",
            str(out),
            "--quiet",
            "--hotwords",
            "丁七 万丈",
        ]
    )
    assert code == 1  # one file failed
    err = capsys.readouterr().err
    assert "broken.wav" in err and f"{len(formats)} transcribed, 1 failed" in err
    for name in formats:
        stem = ("sub/" if name.endswith(".mp3") else "") + Path(name).stem
        txt = (out / f"{stem}.txt").read_text(encoding="utf-8")
        payload = json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
        assert payload["text"] + "\n" == txt and payload["text"]
        assert payload["version"] == 1 and payload["tokens"]
        assert all(t["start_ms"] <= t["end_ms"] <= payload["duration_ms"] for t in payload["tokens"])
        cues = check_srt((out / f"{stem}.srt").read_text(encoding="utf-8"))
        assert "".join(c[2] for c in cues).replace(" ", "") == payload["text"].replace(" ", "")
        assert cues[-1][1] <= payload["duration_ms"] + 1
        vtt = (out / f"{stem}.vtt").read_text(encoding="utf-8")
        assert vtt.startswith("WEBVTT\n\n") and vtt.count(" --> ") == len(cues)
    assert not (out / "broken.txt").exists()
    assert not list(out.rglob("notes*"))


@pytest.mark.slow
def test_all_good_exits_zero_as_a_process(tiny_model_dir, tmp_path) -> None:
    wav = tmp_path / "one.wav"
    wav.write_bytes(all_formats(1.0)["pcm16_16k.wav"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asr",
            "transcribe",
            str(wav),
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--output-dir",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "one.txt").read_text(encoding="utf-8").strip()


def test_missing_model_is_a_clear_error(tmp_path, capsys) -> None:
    wav = tmp_path / "one.wav"
    wav.write_bytes(all_formats(1.0)["pcm16_16k.wav"])
    code = main(["transcribe", str(wav), "--model", str(tmp_path / "no-model"), "--device", "cpu"])
    assert code == 2
    assert "Model directory not found" in capsys.readouterr().err


def test_a_path_that_does_not_exist_is_a_usage_error(tmp_path, capsys) -> None:
    wav = tmp_path / "one.wav"
    wav.write_bytes(all_formats(1.0)["pcm16_16k.wav"])
    code = main(["transcribe", str(wav), str(tmp_path / "missing.mp3"), "--model", str(tmp_path / "x")])
    assert code == 2  # README: usage errors exit 2, before any model is loaded
    err = capsys.readouterr().err
    assert "missing.mp3" in err and "no such file or folder" in err
    hotwords = main(["transcribe", str(wav), "--hotword-file", str(tmp_path / "nope.txt")])
    assert hotwords == 2 and "nope.txt" in capsys.readouterr().err


def test_only_our_own_messages_reach_the_terminal(tiny_model_dir, tmp_path) -> None:
    """No funasr/pydub import notices, no libmpg123 decoder warnings for a damaged mp3."""
    mp3 = bytearray(all_formats(3.0)["stereo44.mp3"])
    for i in range(600, len(mp3), 97):  # damage frames all through the file
        mp3[i] ^= 0x5A
    (tmp_path / "damaged.mp3").write_bytes(bytes(mp3))
    (tmp_path / "good.wav").write_bytes(all_formats(1.0)["pcm16_16k.wav"])
    proc = subprocess.run(
        [sys.executable, "-m", "asr", "transcribe", str(tmp_path / "damaged.mp3"), str(tmp_path / "good.wav"),
         "--model", str(tiny_model_dir), "--device", "cpu", "--output-dir", str(tmp_path / "o"), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    # resource_tracker: "leaked semaphore objects", a process pool still referenced at os._exit.
    for noise in ("Note: ", "mpg123", "Illegal Audio-MPEG-Header", "torchaudio", "Couldn't find ffmpeg",
                  "sudo apt install", "Traceback", "resource_tracker"):  # fmt: skip
        assert noise not in output, output
    assert "2 transcribed, 0 failed" in proc.stderr


def test_recordings_sharing_a_name_keep_their_own_outputs(tiny_model_dir, tmp_path) -> None:
    formats = all_formats(2.0)
    src = tmp_path / "in"
    src.mkdir()
    (src / "call.wav").write_bytes(formats["pcm16_16k.wav"])
    (src / "call.mp3").write_bytes(formats["stereo44.mp3"])
    (src / "other.ogg").write_bytes(formats["vorbis.ogg"])
    out = tmp_path / "out"
    code = main(["transcribe", str(src), "--model", str(tiny_model_dir), "--device", "cpu", "--format", "json",
                 "--output-dir", str(out), "--quiet"])
    assert code == 0
    # The two "call" recordings keep their extensions instead of one overwriting the other.
    assert sorted(p.name for p in out.iterdir()) == ["call.mp3.json", "call.wav.json", "other.json"]
    for ext in ("wav", "mp3"):
        assert abs(json.loads((out / f"call.{ext}.json").read_text())["duration_ms"] - 2000) < 100


def test_models_switched_off_are_not_loaded(tiny_model_dir, tmp_path) -> None:
    """--no-punc / --no-itn: the command neither loads the punctuation model and ITN's grammars
    (seconds of a cold start for the full CT-Transformer) nor warns that the model is missing."""
    (tmp_path / "a.wav").write_bytes(all_formats(1.0)["pcm16_16k.wav"])
    script = ("import sys; from asr.cli import main; code = main(sys.argv[1:]); "
              "print('wetext loaded:', 'wetext' in sys.modules); sys.exit(code)")
    common = [str(tmp_path / "a.wav"), "--model", str(tiny_model_dir), "--device", "cpu",
              "--punc-model", str(tmp_path / "no-such-model"), "--output-dir", str(tmp_path / "o"), "--quiet"]

    def run(*flags: str) -> str:
        proc = subprocess.run([sys.executable, "-c", script, "transcribe", *common, *flags],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout + proc.stderr

    assert "unavailable" in run()  # the missing model is noticed when punctuation is on
    off = run("--no-punc", "--no-itn")
    assert "unavailable" not in off and "wetext loaded: False" in off, off
    assert "wetext loaded: True" in run("--no-punc")


def test_no_cuda_warmup_without_a_gpu() -> None:
    """The command line's CUDA head start starts no thread where the engine runs on the CPU."""
    import threading

    import torch

    from asr.runtime import start_cuda_warmup
    from asr.settings import EngineSettings

    before = threading.active_count()
    assert start_cuda_warmup(EngineSettings(device="cpu")) is None
    if not torch.cuda.is_available():
        assert start_cuda_warmup(EngineSettings(device="auto")) is None
    assert threading.active_count() == before
