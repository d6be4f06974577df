"""`python -m asr export-onnx` (issue #17): the demonstration model exported for the peer runtimes,
run by sherpa-onnx itself on held-out speech, recognises what our engine recognises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from speech import held_out_speech

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "tests" / "assets" / "demo-model"
N_UTTERANCES = 80  # ~1,100 characters: one CER point is ~11 characters


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="the export needs the onnx package (requirements-test.txt)")
    out = tmp_path_factory.mktemp("onnx")
    # Through the command line, as users run it.
    done = subprocess.run([sys.executable, "-m", "asr", "export-onnx", str(DEMO / "asr"), str(out), "--quantize"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def test_export_writes_both_peers_layouts(exported: Path) -> None:
    import onnx

    for name in ("model.onnx", "model.int8.onnx", "model_quant.onnx", "tokens.txt", "config.yaml", "am.mvn",
                 "tokens.json"):
        assert (exported / name).is_file(), name
    model = onnx.load(str(exported / "model.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["speech", "speech_lengths"]
    assert [o.name for o in model.graph.output] == ["logits", "token_num"]
    meta = {p.key: p.value for p in model.metadata_props}
    tokens = json.loads((exported / "tokens.json").read_text("utf-8"))
    assert meta["vocab_size"] == str(len(tokens)) and (meta["lfr_window_size"], meta["lfr_window_shift"]) == ("7", "6")
    # The CMVN sherpa-onnx applies is am.mvn's: 560 shifts (-mean) and 560 scales (1/std).
    from asr.engine.frontend import load_cmvn

    cmvn = load_cmvn(exported / "am.mvn")
    assert np.allclose([float(v) for v in meta["neg_mean"].split(",")], cmvn[0])
    assert np.allclose([float(v) for v in meta["inv_stddev"].split(",")], cmvn[1])
    lines = (exported / "tokens.txt").read_text("utf-8").splitlines()
    assert lines[2] == "</s> 2" and len(lines) == len(tokens)  # sherpa-onnx's decoder stops at </s>
    # The int8 file is smaller because its MatMul weights are int8, not because layers went missing.
    int8 = onnx.load(str(exported / "model.int8.onnx"), load_external_data=False)
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in int8.graph.node)
    assert (exported / "model.int8.onnx").stat().st_size < 0.6 * (exported / "model.onnx").stat().st_size


@pytest.fixture(scope="module")
def held_out() -> tuple[list[str], list[np.ndarray]]:
    texts = json.loads((DEMO / "testset.json").read_text("utf-8"))["cer"][:N_UTTERANCES]
    return texts, [w for w, _ in held_out_speech(texts)]


def _sherpa(model: Path, tokens: Path, waves: list[np.ndarray]) -> list[list[str]]:
    import sherpa_onnx

    recognizer = sherpa_onnx.OfflineRecognizer.from_paraformer(paraformer=str(model), tokens=str(tokens),
                                                               num_threads=2)
    streams = []
    for wave in waves:
        stream = recognizer.create_stream()
        stream.accept_waveform(16000, wave)
        streams.append(stream)
    recognizer.decode_streams(streams)
    return [list(s.result.tokens) for s in streams]


def test_sherpa_onnx_recognises_what_our_engine_recognises(
    exported: Path, held_out: tuple[list[str], list[np.ndarray]]
) -> None:
    pytest.importorskip("sherpa_onnx", reason="sherpa-onnx is not installed (pip install sherpa-onnx)")
    import evaluate

    from asr.engine.core import Engine
    from asr.settings import EngineSettings

    texts, waves = held_out
    ours = Engine.from_settings(EngineSettings(model=str(DEMO / "asr"), device="cpu", dtype="fp32",
                                               warmup=False)).transcribe(waves)
    ours_tokens = [list(r.tokens) for r in ours]
    fp32 = _sherpa(exported / "model.onnx", exported / "tokens.txt", waves)
    int8 = _sherpa(exported / "model.int8.onnx", exported / "tokens.txt", waves)
    cer_ours = evaluate.cer(texts, ["".join(t) for t in ours_tokens])
    cer32 = evaluate.cer(texts, ["".join(t) for t in fp32])
    cer8 = evaluate.cer(texts, ["".join(t) for t in int8])
    same32 = sum(a == b for a, b in zip(ours_tokens, fp32, strict=True)) / len(texts)
    same8 = sum(a == b for a, b in zip(ours_tokens, int8, strict=True)) / len(texts)
    print(f"\nCER ours fp32 {cer_ours:.2f}%, sherpa-onnx fp32 {cer32:.2f}%, int8 {cer8:.2f}%; "
          f"token sequences equal to ours: fp32 {same32:.3f}, int8 {same8:.3f}")
    # Real recognition: the demonstration model's CER is ~23% (random output or a shifted token
    # table is ~100%).
    assert cer32 < 35 and cer8 < 35
    # Same weights, same graph: only the features differ (sherpa-onnx's LFR does not pad the first
    # frame as funasr's does), so most sequences are identical and the CER is within a point or two.
    # The agreement is the sharper check: with inv_stddev left at 1 the first model's CER stayed at 48% (the
    # encoder normalises its input) but only 22% of the sequences were equal.
    assert abs(cer32 - cer_ours) <= 2.0 and same32 >= 0.8
    # funasr's int8 settings (uint8 weights, per channel): within a point, 81% of sequences equal
    # (the first, more fragile model: 3 points, 66%).
    assert abs(cer8 - cer_ours) <= 3.0 and same8 >= 0.7


def test_funasr_onnx_loads_the_same_directory(exported: Path, held_out: tuple[list[str], list[np.ndarray]]) -> None:
    # funasr-onnx pins numpy<=1.26.4, which the service's other packages outgrew: not a test
    # requirement; run where it is installed.
    funasr_onnx = pytest.importorskip("funasr_onnx", reason="funasr-onnx is not installed (it pins numpy<=1.26.4)")
    import evaluate

    texts, waves = held_out
    texts, waves = texts[:20], waves[:20]
    for quantize in (False, True):
        model = funasr_onnx.Paraformer(str(exported), batch_size=1, quantize=quantize, intra_op_num_threads=2)
        hyps = [model(w)[0]["preds"][0] for w in waves]  # (text, tokens) per clip
        assert evaluate.cer(texts, hyps) < 60


@pytest.mark.slow
def test_bench_peers_measures_every_path_in_its_own_process(exported: Path, tmp_path: Path) -> None:
    """`asr bench --peers sherpa-onnx` on the small demonstration model: one row per path, each
    with its own peak RSS (a child process per path), and the thread count it was given."""
    pytest.importorskip("sherpa_onnx", reason="sherpa-onnx is not installed (pip install sherpa-onnx)")
    out = tmp_path / "peers.json"
    done = subprocess.run(
        [sys.executable, "-m", "asr", "bench", "--peers", "sherpa-onnx", "--model-dir", str(DEMO / "asr"),
         "--onnx-dir", str(exported), "--seconds", "8", "--skip-funasr", "--variant", '{"dtype":"int8"}',
         "--threads", "1", "--latency-runs", "1", "--repeat", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text("utf-8"))
    assert result["threads"] == 1
    rows = {r["path"]: r for r in result["rows"]}
    assert set(rows) == {"engine int8", "sherpa-onnx fp32 bs=1", "sherpa-onnx int8 bs=1"}
    for row in rows.values():
        assert row["x_real_time"] > 0 and row["latency_10s_ms_p50"] > 0 and row["torch_threads"] == 1
    # Separate processes: sherpa-onnx's peak RSS does not include the torch engine's weights.
    assert len({r["peak_rss_mb"] for r in rows.values()}) == 3
    assert "| sherpa-onnx int8 bs=1 |" in result["table"]


def test_a_paths_peak_rss_is_its_own_not_its_parents() -> None:
    """Each peer path runs in a child process so that its peak RSS is its own; `ru_maxrss` is
    carried across exec on Linux, so a child started by a parent that had touched 600 MB reported
    600 MB (every path read 3.86 GiB after the parent exported the ONNX model)."""
    held = np.ones(600 * 2**20 // 8)  # touched: 600 MB of the parent's RSS
    probe = ("import resource; from asr.devtools.bench_peers import _peak_rss_mb; "
             "print(_peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    own, inherited = map(float, out.stdout.split())
    assert held.sum() > 0
    if inherited < 500:
        pytest.skip("this kernel does not carry ru_maxrss across exec: nothing to tell apart")
    assert own < 300, (own, inherited)
