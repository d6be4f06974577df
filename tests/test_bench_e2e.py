"""bench-e2e on the CPU with the tiny model and small inputs: every row is measured over the audio
it says, and the seeded inputs are the same from run to run (the numbers here mean nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from speech import SENTENCES, recording, require_espeak

REPO = Path(__file__).resolve().parents[1]
DEMO_PUNC = REPO / "tests" / "assets" / "demo-model" / "punc"


@pytest.mark.slow
def test_bench_e2e_measures_every_row_over_its_audio(tiny_model_dir, tmp_path):
    """With two file workers (the command line's choice on a GPU box for these inputs): the
    folder and the two long files go through them, as `transcribe` would run them."""
    require_espeak()
    import soundfile as sf

    speech = tmp_path / "speech.wav"
    sf.write(speech, recording(SENTENCES[:4], [0.8]).audio, 16000, subtype="PCM_16")
    out = tmp_path / "e2e.json"
    cmd = [sys.executable, "-m", "asr", "bench-e2e", "--model", str(tiny_model_dir), "--speech", str(speech),
           "--punc-model", str(DEMO_PUNC), "--clips", "6", "--long-minutes", "1", "--long-files", "2",
           "--work", str(tmp_path / "work"), "--out", str(out)]
    env = {**os.environ, "ASR_PIPELINE__FILE_WORKERS": "2"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["row"], r.get("setting")): r for r in json.loads(out.read_text())["rows"]}
    clips = sorted((tmp_path / "work" / "clips").glob("*.mp3"))
    assert len(clips) == 6
    import av

    def seconds(path: Path) -> float:
        with av.open(str(path)) as c:
            return sum(f.samples for f in c.decode(audio=0)) / 16000

    clip_s = sum(seconds(p) for p in clips)
    parallel, serial = "parallel (defaults)", "serial (vad_workers=1, decode_processes=0)"
    engine = next(r for (name, _), r in rows.items() if name.startswith("engine:"))
    folder = next(r for (name, s), r in rows.items() if name.startswith("folder:") and s == parallel)
    assert folder["row"].endswith("(CLI, 2 file workers)")
    assert abs(folder["audio_s"] - clip_s) < 0.5 and abs(engine["audio_s"] - clip_s) < 0.5
    for setting in (parallel, serial):
        one = next(r for (name, s), r in rows.items() if name.startswith("long: one") and s == setting)
        assert one["audio_s"] == 60.0 and one["segments"] >= 2 and one["x_real_time"] > 0
    two = next(r for (name, s), r in rows.items() if name.startswith("long: 2 mp3") and s == parallel)
    assert two["audio_s"] == 120.0 and two["row"].endswith("(CLI, 2 file workers)")
    cold = next(r for (name, _), r in rows.items() if name.startswith("cold start"))
    assert cold["returncode"] == 0 and cold["wall_s"] > 0 and cold["again_s"] > 0
    # The outputs of the folder row are real subtitles, one per clip.
    srts = sorted((tmp_path / "work" / "out").glob("*.srt"))
    assert [p.stem for p in srts] == [p.stem for p in clips]
    # Seeded: a second make gives the same files.
    from asr.devtools.bench_e2e import _speech, make_inputs

    make_inputs(tmp_path / "again", _speech(str(speech)), 6, 1, 1)
    remade = sorted((tmp_path / "again" / "clips").glob("*.mp3"))
    assert [p.read_bytes() for p in remade] == [p.read_bytes() for p in clips]
