"""The engine must give exactly what funasr gives for each item alone, whatever the batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asr.engine.core import MIN_SAMPLES, Engine
from asr.engine.model import load_model, resolve_model_dir
from asr.engine.results import join_tokens
from asr.errors import AudioError, ModelLoadError

HOTWORDS = ("丁七", "万丈", "hello", "三上")


def _reference(funasr_model, clip: np.ndarray, hotwords=()) -> dict:
    kwargs = {"hotword": " ".join(hotwords)} if hotwords else {}
    out = funasr_model.generate(input=clip, batch_size=1, **kwargs)
    return out[0] if out else {"text": "", "timestamp": []}


@pytest.mark.parametrize("hotwords", [(), HOTWORDS], ids=["plain", "hotwords"])
def test_batched_results_equal_funasr_alone(engine: Engine, funasr_model, clips, hotwords) -> None:
    results = engine.transcribe(clips, hotwords=list(hotwords))
    assert len(results) == len(clips)
    for clip, result in zip(clips, results):
        ref = _reference(funasr_model, clip, hotwords)
        # funasr spaces every unit when it computes timestamps; we join CJK without spaces.
        assert result.tokens == ref["text"].split()
        assert result.text == join_tokens(ref["text"].split())
        # Ours are clamped to the clip's end (funasr's last end can run past it by LFR padding).
        end = len(clip) * 1000 // 16000
        assert [list(t) for t in result.timestamps] == [
            [min(s, end), min(e, end)] for s, e in ref["timestamp"]
        ]
        assert result.text, "the tiny model must produce tokens for these clips"
        assert result.duration_s == pytest.approx(len(clip) / 16000)


def test_single_equals_batched(engine: Engine, clips) -> None:
    batched = engine.transcribe(clips, hotwords=list(HOTWORDS))
    for clip, b in zip(clips, batched):
        alone = engine.transcribe([clip], hotwords=list(HOTWORDS))[0]
        assert alone.token_ids == b.token_ids
        assert alone.timestamps == b.timestamps


def test_batch_budget_does_not_change_results(engine: Engine, clips) -> None:
    reference = engine.transcribe(clips)
    small = Engine(
        engine.loaded,
        engine.settings.model_copy(update={"batch_budget_s": 2.0, "max_batch_size": 2}),
        engine.device,
    )
    assert [r.token_ids for r in small.transcribe(clips)] == [r.token_ids for r in reference]


def test_hotwords_change_the_decoding_path(engine: Engine, clips) -> None:
    plain = engine.transcribe(clips)
    biased = engine.transcribe(clips, hotwords=list(HOTWORDS))
    assert any(p.token_ids != b.token_ids for p, b in zip(plain, biased))


def test_mixed_hotword_lists_share_a_batch(engine: Engine, funasr_model, clips) -> None:
    lists = [HOTWORDS, (), ("七万",), HOTWORDS[:2], ()]
    results = engine.transcribe(clips, hotwords=lists)
    for clip, words, result in zip(clips, lists, results):
        assert result.tokens == _reference(funasr_model, clip, words)["text"].split()


def test_hotwords_only_on_shorter_items_of_a_batch(engine: Engine, funasr_model, clips) -> None:
    """The rows with hotwords are all shorter than the batch's longest (clips[2], 5.2 s, has
    none): each still equals funasr's result for that clip and list alone."""
    lists = [HOTWORDS, ("七万",), (), (), HOTWORDS[:2]]
    assert max(range(len(clips)), key=lambda i: len(clips[i])) == 2
    results = engine.transcribe(clips, hotwords=lists)
    for clip, words, result in zip(clips, lists, results):
        assert result.tokens == _reference(funasr_model, clip, words)["text"].split()


def test_many_hotwords_use_the_adaptive_filter(engine: Engine, funasr_model, clips) -> None:
    chars = [chr(0x4E00 + i) for i in range(3, 300)]
    many = tuple(dict.fromkeys(chars[i] + chars[i + 1] for i in range(0, 120, 2)))
    assert len(many) > 50
    result = engine.transcribe(clips[:1], hotwords=list(many))[0]
    assert result.tokens == _reference(funasr_model, clips[0], many)["text"].split()


def test_hotword_tokens_match_funasr(engine: Engine, funasr_model) -> None:
    words = ("丁七", "hello", "万丈", "zzz", "二0")
    ours = engine.hotword_tokenizer.encode(words)
    theirs = funasr_model.model.generate_hotwords_list(
        " ".join(words), tokenizer=funasr_model.kwargs["tokenizer"], frontend=funasr_model.kwargs["frontend"]
    )
    assert ours == theirs


def test_results_match_inputs_by_identity(engine: Engine, clips) -> None:
    # A clip too short for one fbank window yields no token; funasr would drop it from its list
    # and shift every later result. Ours stays in place, empty.
    short = np.zeros(MIN_SAMPLES - 1, np.float32)
    mixed = [clips[0], short, clips[1]]
    results = engine.transcribe(mixed)
    alone = engine.transcribe([clips[0], clips[1]])
    assert results[1].text == "" and results[1].tokens == []
    assert results[0].token_ids == alone[0].token_ids
    assert results[2].token_ids == alone[1].token_ids


def test_long_clip_is_split_and_stitched(engine: Engine, clips) -> None:
    long_clip = np.concatenate([clips[2], np.zeros(8000, np.float32), clips[0], clips[2]])
    short_engine = Engine(
        engine.loaded, engine.settings.model_copy(update={"max_clip_s": 6.0}), engine.device
    )
    result = short_engine.transcribe([long_clip])[0]
    assert result.duration_s == pytest.approx(len(long_clip) / 16000)
    starts = [s for s, _ in result.timestamps]
    assert starts == sorted(starts)
    assert result.timestamps[-1][1] > 6000  # the later pieces are on the file's timeline
    assert result.timestamps[-1][1] <= len(long_clip) / 16


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 1600), np.float32),
        np.zeros(1600, np.int16),
        np.zeros(0, np.float32),
        np.array([0.1, np.nan] * 800, np.float32),
    ],
    ids=["2d", "int16", "empty", "nan"],
)
def test_bad_arrays_raise_audio_error(engine: Engine, bad) -> None:
    with pytest.raises(AudioError):
        engine.transcribe([bad])


def test_loaded_state_equals_saved(engine: Engine, tiny_model_dir) -> None:
    saved = torch.load(tiny_model_dir / "model.pt", weights_only=True)
    loaded = engine.model.state_dict()
    assert saved.keys() == loaded.keys()
    for key, value in saved.items():
        assert torch.equal(value, loaded[key].cpu()), key
    assert not any(t.is_meta for t in list(engine.model.parameters()) + list(engine.model.buffers()))


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy-format"])
def test_weights_for_the_gpu_are_mapped_where_the_format_allows(tiny_model_dir, tmp_path, zipfile) -> None:
    """Weights bound for a GPU are memory-mapped from a checkpoint in torch's zip format and read
    from one in its legacy format, the same tensors either way; garbage is a ModelLoadError."""
    from asr.engine.model import _read_weights

    saved = torch.load(tiny_model_dir / "model.pt", weights_only=True)
    path = tmp_path / "model.pt"
    torch.save(saved, path, _use_new_zipfile_serialization=zipfile)
    state = _read_weights(path, mapped=True)
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="Could not read weights"):
        _read_weights(path, mapped=True)


def test_mismatched_weights_are_refused(tiny_model_dir, tmp_path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    state = torch.load(broken / "model.pt", weights_only=True)
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 2)
    state[key] = state[key][:, :-1]
    torch.save(state, broken / "model.pt")
    with pytest.raises(ModelLoadError, match="other shapes"):
        load_model(broken, torch.device("cpu"))
    (broken / "am.mvn").unlink()
    with pytest.raises(ModelLoadError, match="missing am.mvn"):
        load_model(broken, torch.device("cpu"))


def test_offline_hub_id_fails_fast(tmp_path) -> None:
    import time

    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="--model"):
        resolve_model_dir("iic/not-cached-model", tmp_path)
    assert time.monotonic() - start < 10


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model_dir(str(tmp_path / "nope"), tmp_path)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_bf16_weights_run_every_path(engine: Engine, tiny_model_dir, clips, attention) -> None:
    # bf16 weights with funasr's fp32 masks, the torch frontend and the fused attention, with
    # and without hotwords in one batch: it must run and stay close to the fp32 reference.
    from asr.settings import EngineSettings

    settings = EngineSettings(model=str(tiny_model_dir), device="cpu", dtype="bf16", attention=attention,
                              frontend="torch", warmup=False)
    bf16 = Engine(load_model(tiny_model_dir, torch.device("cpu")), settings, torch.device("cpu"))
    assert bf16.info()["dtype"] == "bfloat16" and bf16.attention_backend == attention
    results = bf16.transcribe(clips, hotwords=[HOTWORDS, (), HOTWORDS, (), ("七万",)])
    assert all(r.text for r in results)
    for ref, got in zip(engine.probe(clips), bf16.probe(clips), strict=True):
        cos = torch.nn.functional.cosine_similarity(ref["enc"].flatten(), got["enc"].flatten(), dim=0)
        assert cos > 0.99
        assert abs(int(ref["token_len"]) - int(got["token_len"])) <= 1


def test_join_tokens() -> None:
    assert join_tokens(["你", "好", "hello", "world", "再", "见", "ok"]) == "你好hello world再见ok"
    assert join_tokens([]) == ""


def test_out_of_memory_splits_the_batch(engine: Engine, clips, monkeypatch) -> None:
    # One batch of all the clips, as a GPU plans it (a CPU also splits by padding).
    monkeypatch.setattr("asr.engine.core._CPU_MAX_PADDING", 1.0)
    # Fault injection: the forward pass runs out of memory for batches of more than two items.
    reference = engine.transcribe(clips)
    real_forward = engine._forward
    tried: list[int] = []
    ran: list[int] = []

    def forward(feats, feat_lens, hotwords):
        tried.append(len(hotwords))
        if len(hotwords) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        ran.append(len(hotwords))
        return real_forward(feats, feat_lens, hotwords)

    monkeypatch.setattr(engine, "_forward", forward)
    results = engine.transcribe(clips)
    assert [r.token_ids for r in results] == [r.token_ids for r in reference]
    assert tried[0] == len(clips) and sum(ran) == len(clips) and max(ran) <= 2


def test_cpu_batches_keep_padding_small() -> None:
    """Longest first; a clip joins only while the batch's padding stays within max_padding."""
    from asr.engine.batching import plan

    clips = [np.zeros(n * 1600, np.float32) for n in (297, 202, 201, 100, 99, 98, 10)]
    def batches(max_padding: float) -> list[list[int]]:
        return [b.index for b in plan(clips, [()] * len(clips), 600, 8, max_padding)]

    assert batches(1.0) == [[0, 1, 2, 3, 4, 5, 6]]
    # 29.7 s with 20.2 s would be 16% padding: alone; then the 20 s pair, the 10 s three, 1 s.
    assert batches(0.1) == [[0], [1, 2], [3, 4, 5], [6]]
    for max_padding in (0.05, 0.1, 0.3):
        for index in batches(max_padding):
            lengths = [len(clips[i]) for i in index]
            padded = max(lengths) * len(lengths)
            assert padded - sum(lengths) <= max_padding * padded


def test_out_of_memory_on_one_item_is_raised(engine: Engine, clips, monkeypatch) -> None:
    def forward(*args):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(engine, "_forward", forward)
    with pytest.raises(torch.OutOfMemoryError):
        engine.transcribe(clips[:1])


def test_model_generation_is_deterministic(tiny_model_dir, tmp_path) -> None:
    from asr.devtools.testmodel import make_model_dir

    again = make_model_dir(tmp_path / "again", "tiny", seed=0)
    for name in ("config.yaml", "tokens.json", "am.mvn", "seg_dict", "configuration.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    a = torch.load(again / "model.pt", weights_only=True)
    b = torch.load(tiny_model_dir / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = torch.load(make_model_dir(tmp_path / "other", "tiny", seed=1) / "model.pt", weights_only=True)
    assert any(not torch.equal(a[k], other[k]) for k in a)


def test_loading_skips_random_init_and_leaves_torch_init_as_it_was(tiny_model_dir) -> None:
    import subprocess
    import sys
    import threading

    import torch

    from asr.engine.model import skip_init

    def initialised() -> bool:
        return bool(torch.nn.Linear(64, 64).weight.abs().sum() > 0)

    with pytest.raises(RuntimeError), skip_init():
        weight = torch.full((64, 64), 0.0)
        assert torch.nn.init.normal_(weight) is weight and bool((weight == 0).all())  # skipped here
        seen_elsewhere: list[bool] = []
        other = threading.Thread(target=lambda: seen_elsewhere.append(initialised()))
        other.start()
        other.join()
        assert seen_elsewhere == [True]  # another thread meanwhile initialises as always
        raise RuntimeError("a constructor failed")
    weight = torch.full((64, 64), 0.0)
    torch.nn.init.normal_(weight)
    assert bool((weight != 0).any())  # after the block (even one that failed), init works again
    # In a fresh interpreter: building the network imports no compiler machinery (the meta
    # device's reference kernels imported torch._dynamo, about a second of every start).
    code = ("import sys, torch; from pathlib import Path; from asr.engine.model import load_model; "
            f"load_model(Path({str(tiny_model_dir)!r}), torch.device('cpu')); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
