"""Several CPU engines side by side (asr/engine/pool.py): real spawned children on the tiny model,
compared item by item with the in-process engine; its splitting, errors and a child's death."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from asr.engine.pool import EnginePool, auto_processes, shards
from asr.engine.process import load_engine
from asr.errors import AudioError, EngineRestartedError
from asr.settings import EngineSettings


def _settings(model_dir: Path, **extra) -> EngineSettings:
    # The session's `engine` fixture's settings: the pool must answer as that engine does.
    return EngineSettings(model=str(model_dir), device="cpu", dtype="fp32", warmup=False, **extra)


@pytest.fixture(scope="module")
def pool(tiny_model_dir: Path):
    engine = load_engine(_settings(tiny_model_dir, cpu_processes=2, num_threads=2))
    assert isinstance(engine, EnginePool)
    yield engine
    engine.close()


def _clips(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.1, int(rng.uniform(0.5, 9) * 16000)).astype(np.float32) for _ in range(n)]


def _key(results) -> list:
    return [(t.text, t.token_ids, t.timestamps, t.duration_s) for t in results]


def test_shards_are_runs_of_neighbouring_lengths_with_about_equal_audio() -> None:
    lengths = [int(x) for x in np.random.default_rng(1).integers(1, 1000, 97)]
    runs = shards(lengths, 4)
    assert sorted(i for r in runs for i in r) == list(range(97))
    sums = [sum(lengths[i] for i in r) for r in runs]
    assert len(runs) == 4 and max(sums) - min(sums) <= max(lengths)
    # Neighbouring lengths: every clip of an earlier run is at least as long as any of a later one.
    for a, b in zip(runs, runs[1:]):
        assert min(lengths[i] for i in a) >= max(lengths[i] for i in b)
    assert shards([5000, 1, 1, 1], 3)[0] == [0]  # a long clip gets a run of its own
    assert shards([7], 4) == [[0]]


def test_auto_is_one_engine_below_8_cores_and_one_per_4_from_8() -> None:
    assert [auto_processes(c) for c in (1, 2, 7, 8, 16, 64)] == [1, 1, 1, 2, 4, 16]


def test_answers_item_by_item_as_one_engine(pool: EnginePool, engine) -> None:
    clips = _clips(9)
    hotwords = [["天气"], [], ["我们", "今天"], [], [], ["天气"], [], [], ["今天"]]
    got = pool.transcribe(clips, hotwords)
    assert _key(got) == _key(engine.transcribe(clips, hotwords))
    assert _key(pool.transcribe(clips[:1])) == _key(engine.transcribe(clips[:1]))  # one clip: one child
    info = pool.info()
    assert info["cpu_processes"] == 2 and info["threads_per_process"] == 1
    assert len(set(info["process"])) == 2 and os.getpid() not in info["process"]


def test_concurrent_calls_each_get_their_own_results(pool: EnginePool, engine) -> None:
    calls = [_clips(5, seed=s) for s in range(4)]
    want = [_key(engine.transcribe(c)) for c in calls]
    got: dict[int, list] = {}

    def call(k: int) -> None:
        got[k] = _key(pool.transcribe(calls[k]))

    threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got[k] for k in range(4)] == want


def test_errors_name_the_callers_input(pool: EnginePool) -> None:
    clips = _clips(6)
    clips[4] = np.full(16000, np.nan, np.float32)
    with pytest.raises(AudioError, match="Input 4 contains NaN"):
        pool.transcribe(clips)
    with pytest.raises(AudioError, match="Input 1 must be mono"):
        pool.transcribe([clips[0], np.zeros((2, 100), np.float32)])
    assert pool.transcribe(_clips(2))[0].duration_s > 0  # still serving


def test_a_child_that_dies_fails_its_call_and_the_pool_goes_on(pool: EnginePool, engine) -> None:
    clips = _clips(8, seed=5)
    victim = pool.info()["process"][0]
    os.kill(victim, signal.SIGSTOP)  # frozen, so the call is surely running on it when it dies
    outcome: list = []
    caller = threading.Thread(target=lambda: outcome.append(_catch(pool.transcribe, clips)))
    caller.start()
    caller.join(3)
    os.kill(victim, signal.SIGKILL)
    caller.join(120)
    assert isinstance(outcome[0], EngineRestartedError)
    assert _key(pool.transcribe(clips)) == _key(engine.transcribe(clips))
    assert pool.restarts == 1 and victim not in pool.info()["process"]


def _catch(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc


def test_auto_pools_only_in_the_products_processes_and_for_inputs_worth_it(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asr.runtime
    from asr.engine.core import Engine

    settings = _settings(tiny_model_dir, num_threads=8)  # 8 cores' worth: 'auto' runs 2 engines
    monkeypatch.setattr(asr.runtime, "_configured", False)
    assert isinstance(load_engine(settings), Engine)  # a user's script: no spawned processes
    monkeypatch.setattr(asr.runtime, "_configured", True)
    assert isinstance(load_engine(settings, input_bytes=1 << 20), Engine)  # the CLI's one small file
    pool = load_engine(settings, input_bytes=100 << 20)
    try:
        assert isinstance(pool, EnginePool) and pool.engines == 2
        assert pool.info()["threads_per_process"] == 4
    finally:
        pool.close()


def test_one_process_or_off_keeps_a_single_engine(tiny_model_dir: Path) -> None:
    from asr.engine.core import Engine

    one = load_engine(_settings(tiny_model_dir, cpu_processes=1))
    off = load_engine(_settings(tiny_model_dir, cpu_processes=3, process="off"))
    assert isinstance(one, Engine) and isinstance(off, Engine)


def test_the_cli_with_a_pool_writes_what_one_engine_writes(tiny_model_dir: Path, tmp_path: Path) -> None:
    """What a CPU user runs: `transcribe` over a folder, one engine against two engine processes
    (ASR_ENGINE__CPU_PROCESSES, as on a 8-core server), the scheduler merging two batches a call."""
    import json
    import subprocess
    import sys

    import soundfile as sf

    folder = tmp_path / "in"
    folder.mkdir()
    for k, clip in enumerate(_clips(6, seed=9)):
        sf.write(folder / f"c{k}.wav", clip, 16000, subtype="FLOAT")
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        proc = subprocess.run(
            [sys.executable, "-m", "asr", "transcribe", str(folder), "--model", str(tiny_model_dir), "--device", "cpu",
             "--dtype", "fp32", "--no-punc", "--format", "json", "--output-dir", str(out), "--quiet"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "ASR_ENGINE__CPU_PROCESSES": str(n), "ASR_ENGINE__NUM_THREADS": "2"},
        )
        assert proc.returncode == 0, proc.stderr
        outs[n] = {p.name: json.loads(p.read_text("utf-8")) for p in sorted(out.glob("*.json"))}
    assert len(outs[1]) == 6
    for name, one in outs[1].items():
        two = outs[2][name]
        assert (two["text"], two["tokens"]) == (one["text"], one["tokens"]), name


def test_the_scheduler_merges_a_batch_per_engine(tiny_model_dir: Path, pool: EnginePool) -> None:
    from asr.pipeline.pipeline import Pipeline
    from asr.settings import Settings

    settings = Settings(engine=_settings(tiny_model_dir, max_batch_size=6))
    assert Pipeline(settings, pool).scheduler.options.max_batch_size == 12  # (not started: no threads yet)



def test_a_model_that_does_not_load_is_a_typed_error_and_no_child_is_left(tmp_path: Path) -> None:
    from asr.errors import ModelLoadError

    def children() -> set[int]:
        """This process's spawned children (not multiprocessing's resource tracker, which stays)."""
        me = str(os.getpid())
        out = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if (stat.read_text().rsplit(")", 1)[1].split()[1] == me
                        and b"spawn_main" in (stat.parent / "cmdline").read_bytes()):
                    out.add(int(stat.parent.name))
            except (OSError, IndexError):
                continue
        return out

    before = children()
    with pytest.raises(ModelLoadError, match="not found"):
        EnginePool(_settings(tmp_path / "no-model"), 2, 1)
    assert children() - before == set()
