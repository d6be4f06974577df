"""Speaker labels (asr/pipeline/speakers.py): clustering, and labels through the CLI in every format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from speech import SENTENCES

from asr.cli import main
from asr.pipeline.speakers import SpeakerEmbedder, SpeakerOptions, cluster_speakers, make_campplus_dir
from asr.pipeline.subtitles import validate_srt, validate_vtt

SR = 16000


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

