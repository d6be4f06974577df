"""The CLI on long recordings: VAD segments, sentences and subtitles on the original timeline;
short files stay one clip."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
from speech import SENTENCES, recording, require_espeak

from asr.cli import main
from asr.pipeline.subtitles import validate_srt, validate_vtt

SR = 16000


@pytest.fixture(scope="module")
def long_rec():
    """About 2.5 minutes of espeak Mandarin: 12 sentences x 2, with pauses of 2-6 s."""
    require_espeak()
    return recording(SENTENCES * 2, [6.0, 2.5, 4.0], noise=0.002)


def test_cli_vad_writes_valid_subtitles_on_the_original_timeline(tiny_model_dir, long_rec, tmp_path):
    wav = tmp_path / "meeting.wav"
    sf.write(wav, long_rec.audio, SR, subtype="PCM_16")
    out = tmp_path / "out"
    code = main(["transcribe", str(wav), "--model", str(tiny_model_dir), "--device", "cpu", "--vad",
                 "--no-punc", "--format", "json", "srt", "vtt", "txt", "--output-dir", str(out), "--quiet"])
    assert code == 0
    payload = json.loads((out / "meeting.json").read_text(encoding="utf-8"))
    srt = (out / "meeting.srt").read_text(encoding="utf-8")
    vtt = (out / "meeting.vtt").read_text(encoding="utf-8")
    assert validate_srt(srt) == len(payload["sentences"]) > 0
    assert validate_vtt(vtt) == len(payload["sentences"])
    duration_ms = len(long_rec.audio) * 1000 // SR
    assert payload["duration_ms"] == duration_ms
    assert payload["applied"]["vad"] is True
    # VAD segments cover every sentence of the recording (Silero's 32 ms frames, 200 ms padding:
    # 300 ms tolerance), and nothing lies in the long pauses.
    segs = [(s["start_ms"], s["end_ms"]) for s in payload["segments"]]
    for start, end in long_rec.spans:
        s_ms, e_ms = start * 1000 // SR, end * 1000 // SR
        assert any(a - 300 <= s_ms and e_ms <= b + 300 for a, b in segs), (s_ms, e_ms, segs)
    speech = [(s * 1000 // SR - 300, e * 1000 // SR + 300) for s, e in long_rec.spans]
    for sent in payload["sentences"]:
        # Every sentence lies in speech (random weights put words anywhere inside a segment,
        # so a sentence may span the short pauses a segment contains, not the long ones).
        assert sent["end_ms"] <= duration_ms and sent["start_ms"] < sent["end_ms"]
        assert any(a <= sent["start_ms"] <= b for a, b in _merge(speech, 2600)), sent
    starts = [t["start_ms"] for t in payload["tokens"]]
    assert starts and starts == sorted(starts)
    assert (out / "meeting.txt").read_text(encoding="utf-8").strip() == payload["text"]


def _merge(spans, gap):
    out = []
    for a, b in spans:
        if out and a - out[-1][1] <= gap:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def test_cli_auto_vad_keeps_short_files_on_one_clip(tiny_model_dir, tmp_path):
    require_espeak()
    rec = recording(SENTENCES[:2], [1.0])
    wav = tmp_path / "short.wav"
    sf.write(wav, rec.audio, SR, subtype="PCM_16")
    assert main(["transcribe", str(wav), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--format", "json", "--output-dir", str(tmp_path / "o"), "--quiet"]) == 0
    payload = json.loads((tmp_path / "o" / "short.json").read_text(encoding="utf-8"))
    assert payload["applied"]["vad"] is False
    assert payload["segments"] == [{"start_ms": 0, "end_ms": len(rec.audio) * 1000 // SR}]

