"""The long-audio path wired into the product: CLI, speakers, memory bound (tiny random model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from speech import SENTENCES, recording, require_espeak

from asr.cli import main
from asr.pipeline.options import Options
from asr.pipeline.pipeline import blocks_stream, transcribe_files
from asr.pipeline.speakers import SpeakerEmbedder, SpeakerOptions, cluster_speakers, make_campplus_dir
from asr.pipeline.subtitles import validate_srt, validate_vtt
from asr.settings import load_settings

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


@pytest.fixture(scope="module")
def campplus(tmp_path_factory):
    return SpeakerEmbedder(make_campplus_dir(tmp_path_factory.mktemp("campplus"), seed=0))


def test_two_voices_get_speaker_labels_in_json_srt_and_text(tiny_model_dir, tmp_path, campplus):
    """Random CAM++ weights do not separate voices: this checks wiring (labels on every
    sentence, in every format, the count asked for), not diarisation quality."""
    from speech import two_voice_recording

    rec = two_voice_recording(SENTENCES[:4], tmp_path)
    wav = tmp_path / "two.wav"
    sf.write(wav, rec.audio, SR, subtype="PCM_16")
    out = tmp_path / "out"
    code = main(["transcribe", str(wav), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--speakers", "2", "--speaker-model", str(campplus.model_dir), "--no-punc",
                 "--format", "json", "srt", "vtt", "txt", "--output-dir", str(out), "--quiet"])
    assert code == 0
    payload = json.loads((out / "two.json").read_text(encoding="utf-8"))
    labels = [s["speaker"] for s in payload["sentences"]]
    assert labels and all(label in ("S1", "S2") for label in labels)
    assert payload["speakers"] == list(dict.fromkeys(labels))
    srt = (out / "two.srt").read_text(encoding="utf-8")
    assert validate_srt(srt) == len(labels)
    assert all(line.startswith(("S1: ", "S2: ")) for line in srt.split("\n")[2::4] if line)
    assert validate_vtt((out / "two.vtt").read_text(encoding="utf-8")) == len(labels)
    assert "<v S" in (out / "two.vtt").read_text(encoding="utf-8")
    assert (out / "two.txt").read_text(encoding="utf-8").startswith(labels[0] + ": ")


def test_clustering_separates_distinct_embeddings_and_honours_the_count():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32))
    order = [0, 1, 2, 0, 1]
    emb = np.concatenate([centres[k] + 0.3 * rng.normal(size=(40, 32)) for k in order])
    labels = cluster_speakers(emb)
    truth = np.repeat(order, 40)
    assert len(set(labels.tolist())) == 3
    for k in range(3):  # one label per true speaker, numbered by first appearance
        assert len(set(labels[truth == k].tolist())) == 1
    assert labels[0] == 0 and labels[40] == 1
    assert len(set(cluster_speakers(emb, SpeakerOptions(n_speakers=2)).tolist())) == 2
    big = np.concatenate([emb] * 10)  # over max_points: k-means first, same answer
    assert len(set(cluster_speakers(big, SpeakerOptions(max_points=100)).tolist())) == 3


@pytest.mark.slow
def test_streaming_memory_does_not_grow_with_length(tiny_model_dir, engine, long_rec):
    """A recording streams through the pipeline: the peak of Python/numpy memory (tracemalloc,
    which numpy reports to; free of allocator noise) for a 9-minute stream equals that of a
    5-minute one within 4 MB, where holding the extra 4 minutes of audio alone would add 15 MB.
    Both are longer than Silero's 128 s decision block, which sets the fixed part of the peak.
    The stream is generated block by block from a real espeak recording, as a decoder yields it."""
    import tracemalloc

    settings = load_settings(None, engine={"model": str(tiny_model_dir), "device": "cpu"},
                             longform={"group_s": 15.0, "punc_model": None})
    options = Options(vad=True, punctuation=False)
    block = 10 * SR

    def stream(minutes: float):
        total = int(minutes * 60 * SR)
        for start in range(0, total, block):
            offset = start % (len(long_rec.audio) - block)
            yield long_rec.audio[offset : offset + min(block, total - start)].copy()

    transcribe_files(settings, engine, [blocks_stream(stream(0.5))], options)  # warm-up: lazy imports
    peaks = {}
    for minutes in (5, 9):
        tracemalloc.start()
        try:
            (result,) = transcribe_files(settings, engine, [blocks_stream(stream(minutes))], options)
            peaks[minutes] = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
        assert result.duration_ms == pytest.approx(minutes * 60_000, abs=1000) and result.segments
    assert peaks[9] - peaks[5] < 4, peaks
