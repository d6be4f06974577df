"""The engine in a process of its own (asr/engine/process.py): a real spawned child on the tiny
model, compared with the in-process engine on the same clips; its errors, and its death."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from speech import SENTENCES, recording, require_espeak

from asr.engine.process import EngineProcess, wants_process
from asr.errors import AudioError, EngineFailedError, ModelLoadError
from asr.settings import EngineSettings


def _settings(model_dir: Path) -> EngineSettings:
    # The session's `engine` fixture's settings: the two must answer alike.
    return EngineSettings(model=str(model_dir), device="cpu", dtype="fp32", warmup=False)


@pytest.fixture(scope="module")
def child(tiny_model_dir: Path):
    engine = EngineProcess(_settings(tiny_model_dir))
    yield engine
    engine.close()


def _same(a, b) -> None:
    assert [(t.text, t.token_ids, t.timestamps, t.duration_s) for t in a] == [
        (t.text, t.token_ids, t.timestamps, t.duration_s) for t in b
    ]


def test_answers_as_the_engine_in_this_process(child: EngineProcess, engine) -> None:
    require_espeak()
    speech = recording(SENTENCES[:2], [0.5]).audio
    rng = np.random.default_rng(3)
    clips = [speech, rng.normal(0, 0.05, 8000).astype(np.float32), speech[: 16000 * 3], speech[::-1].copy()]
    hotwords = [["天气"], [], ["我们", "今天"], []]
    got = child.transcribe(clips, hotwords)
    _same(got, engine.transcribe(clips, hotwords))
    assert any(t.text for t in got)
    # One list for all, and a call larger than the first shared area (64 MB: 20 min of audio).
    long = np.tile(speech, int(np.ceil(1250 * 16000 / len(speech))))[: 1250 * 16000]
    assert long.nbytes > 64 << 20
    pair = [long[: 16000 * 70], long]
    _same(child.transcribe(pair, ["天气"]), engine.transcribe(pair, ["天气"]))
    info = child.info()
    assert info["process"] == child.pid != os.getpid()
    assert info["device"] == "cpu" and info["parameters"] == engine.info()["parameters"]


def test_bad_input_gets_the_engines_typed_errors(child: EngineProcess) -> None:
    with pytest.raises(AudioError, match="mono"):
        child.transcribe([np.zeros((2, 16000), np.float32)])
    with pytest.raises(AudioError, match="float"):
        child.transcribe([np.zeros(16000, np.int16)])
    with pytest.raises(AudioError, match="NaN"):  # found by the child
        child.transcribe([np.zeros(16000, np.float32), np.full(16000, np.nan, np.float32)])
    with pytest.raises(ValueError, match="hotword lists"):
        child.transcribe([np.zeros(16000, np.float32)] * 2, [["a"], ["b"], ["c"]])
    assert child.transcribe([np.zeros(16000, np.float32)])[0].duration_s == 1.0  # still serving


def test_a_child_that_dies_fails_its_call_and_is_started_again(child: EngineProcess) -> None:
    clip = np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32)
    before = child.transcribe([clip])
    restarts = child.restarts
    # Frozen, then killed while a call waits on it: that call fails, typed.
    os.kill(child.pid, signal.SIGSTOP)
    outcome: list[BaseException | object] = []

    def call() -> None:
        try:
            outcome.append(child.transcribe([clip]))
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # waiting on the frozen child
    os.kill(child.pid, signal.SIGKILL)
    thread.join(120)
    assert isinstance(outcome[0], EngineFailedError) and "stopped" in str(outcome[0])
    assert child.restarts == restarts + 1
    _same(child.transcribe([clip]), before)  # a new child answers as the old one did
    # Ctrl-C in a terminal reaches the whole process group: the child leaves shutdown to its parent.
    os.kill(child.pid, signal.SIGINT)
    os.kill(child.pid, signal.SIGTERM)
    time.sleep(0.3)
    _same(child.transcribe([clip]), before)
    assert child.restarts == restarts + 1
    # Killed between calls: the next call starts a new one and succeeds.
    os.kill(child.pid, signal.SIGKILL)
    time.sleep(0.2)
    _same(child.transcribe([clip]), before)
    assert child.restarts == restarts + 2


DEMO_PUNC = Path(__file__).parent / "assets" / "demo-model" / "punc"


def test_the_child_runs_the_pipelines_networks_and_loads_them_again_after_a_restart(child: EngineProcess) -> None:
    """`longform.punc_in_engine` / `vad_in_engine`: the child's networks give this process's
    answers, beside recognition calls, and a child started again after a death serves them again
    (the call that met the death is made once more)."""
    from asr.pipeline.punc import PuncNetwork, Punctuator
    from asr.pipeline.silero_torch import TorchSilero
    from asr.pipeline.vad import SileroVad

    local = Punctuator(DEMO_PUNC)
    words = [w for sentence in SENTENCES for w in sentence if w != "，"]
    ids = [local._tokenizer.tokens2ids(words[i : i + 30]) for i in range(0, len(words), 25)]
    want = PuncNetwork(DEMO_PUNC).classes(ids, 256)
    assert len({int(c) for row in want for c in row}) >= 2  # not one class everywhere
    with pytest.raises(ModelLoadError, match="config.yaml is missing"):
        child.serve_punctuation(str(DEMO_PUNC.parent / "asr-missing"), "cpu")
    network = child.serve_punctuation(str(DEMO_PUNC), "auto")  # 'auto': the engine's device
    clip = np.random.default_rng(1).normal(0, 0.1, 48000).astype(np.float32)
    recognised: list = []
    thread = threading.Thread(target=lambda: recognised.extend(child.transcribe([clip] * 4)))
    thread.start()
    got = network.classes(ids, 256)
    thread.join(120)
    assert len(recognised) == 4
    assert [r.tolist() for r in got] == [r.tolist() for r in want]
    # The marks of a punctuator whose network is the child's are this process's.
    served = Punctuator(DEMO_PUNC, network=network)
    texts = ["".join(SENTENCES[:3]).replace("，", ""), "语音识别系统可以自动生成会议纪要"]
    assert served.punctuate(texts) == local.punctuate(texts)
    # Silero on a recording's block: the samples cross through the side area.
    require_espeak()
    speech = recording(SENTENCES[:3], [0.7, 1.1], lead_s=0.6).audio
    vad = SileroVad(lanes=4, lane_s=2.0, network=child.serve_vad("cpu"))
    here = SileroVad(lanes=4, lane_s=2.0, device="cpu")
    probs = vad.frame_probs(np.zeros(0, np.float32), speech)
    np.testing.assert_allclose(probs, here.frame_probs(np.zeros(0, np.float32), speech), atol=1e-5)
    assert probs.max() > 0.9 and probs.min() < 0.1  # speech and pauses told apart
    assert vad.segment(speech) == here.segment(speech)
    assert isinstance(here._torch, TorchSilero)
    restarts = child.restarts
    os.kill(child.pid, signal.SIGKILL)
    time.sleep(0.2)
    assert [r.tolist() for r in network.classes(ids, 256)] == [r.tolist() for r in want]
    assert child.restarts == restarts + 1
    np.testing.assert_allclose(vad.frame_probs(np.zeros(0, np.float32), speech), probs, atol=1e-6)
    assert child.restarts == restarts + 1


def test_a_pipeline_beside_its_engine_process_takes_the_networks_from_it(child: EngineProcess, tmp_path) -> None:
    """The one-process service and command (`EngineNetworks`): with `punc_in_engine` and
    `vad_in_engine` the pipeline's models are the child's networks; without, its own."""
    from asr.engine.process import ChildPunctuation, ChildSilero
    from asr.pipeline.models import EngineNetworks, StageModels
    from asr.settings import load_settings

    for served, process in ((True, "on"), (False, "on"), (True, "auto")):  # 'auto' on a CPU: in this process
        settings = load_settings(None, engine={"process": process},
                                 longform={"punc_model": str(DEMO_PUNC), "punc_in_engine": served,
                                           "vad_in_engine": served})
        models = StageModels(settings.longform, tmp_path)
        networks = EngineNetworks(settings)
        networks.attach(models)
        models.preload(itn=False, punctuation=True).join(60)
        networks.start(child)
        served = served and process == "on"
        punctuator = models.punctuator()
        assert punctuator is not None
        assert isinstance(getattr(punctuator.network, "network", None), ChildPunctuation) == served
        assert isinstance(models.vad()._torch, ChildSilero) == served


def test_a_closed_engine_refuses_calls_and_starts_nothing(tiny_model_dir: Path) -> None:
    engine = EngineProcess(_settings(tiny_model_dir))
    pid = engine.pid
    engine.close()
    with pytest.raises(EngineFailedError, match="closed"):
        engine.transcribe([np.zeros(16000, np.float32)])
    assert engine.restarts == 0 and engine.pid == pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_model_that_cannot_load_is_a_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model: SeacoParaformer\n")
    with pytest.raises(ModelLoadError):
        EngineProcess(EngineSettings(model=str(tmp_path), device="cpu", warmup=False))


def test_auto_is_a_gpu_and_entry_point_choice(tiny_model_dir: Path) -> None:
    settings = _settings(tiny_model_dir)
    assert not wants_process(settings)  # the CPU
    assert wants_process(settings.model_copy(update={"process": "on"}))
    assert not wants_process(settings.model_copy(update={"process": "off", "device": "auto"}))
    # The CLI with a few small files: the child's start would cost more than it saves.
    assert not wants_process(settings, input_bytes=3 << 20)
    assert wants_process(settings.model_copy(update={"process": "on"}), input_bytes=3 << 20)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the engine process's default)")
def test_on_the_gpu_the_child_answers_as_the_engine_here(tiny_model_dir: Path) -> None:
    from asr.engine.core import Engine

    settings = EngineSettings(model=str(tiny_model_dir), device="cuda", warmup=False)
    rng = np.random.default_rng(5)
    clips = [rng.normal(0, 0.1, n).astype(np.float32) for n in (8000, 16000 * 3, 16000 * 12, 16000 * 70)]
    hotwords = [["天气"], [], ["我们"], []]
    here = Engine.from_settings(settings)
    child = EngineProcess(settings)
    try:
        for _ in range(3):  # eager, then the captured graphs' replays
            _same(child.transcribe(clips, hotwords), here.transcribe(clips, hotwords))
        assert child.info()["device"].startswith("cuda")
        # The pipelines' networks on the child's GPU ('auto'), against the same networks here.
        from asr.pipeline.punc import PuncNetwork, Punctuator
        from asr.pipeline.silero_torch import TorchSilero

        tokens = Punctuator(DEMO_PUNC)._tokenizer
        words = [w for sentence in SENTENCES for w in sentence if w != "，"]
        ids = [tokens.tokens2ids(words[i : i + 40]) for i in range(0, len(words), 30)]
        served = child.serve_punctuation(str(DEMO_PUNC), "auto").classes(ids, 512)
        assert [r.tolist() for r in served] == [r.tolist() for r in PuncNetwork(DEMO_PUNC, "cuda").classes(ids, 512)]
        ext = rng.normal(0, 0.1, 16 * 32000 + 512 * 40 + 64).astype(np.float32)
        probs = child.serve_vad("auto").lane_probs(ext, 16, 32000, 40 + 62)
        np.testing.assert_allclose(probs, TorchSilero("cuda").lane_probs(ext, 16, 32000, 40 + 62), atol=1e-3)
    finally:
        child.close()
