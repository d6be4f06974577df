"""The encoder's CUDA-graph path: the sync-free forward it captures, bucketing, and (on a GPU)
replays that follow new inputs."""

from __future__ import annotations

import pytest
import torch

from asr.engine import graphs
from asr.engine.attention import patch_attention
from asr.engine.core import Engine
from asr.engine.model import load_model
from asr.settings import EngineSettings

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def test_buckets_cover_the_batch_and_stay_few() -> None:
    for batch in range(1, 1100):
        for frames in range(1, 400, 7):
            rows, padded = graphs.bucket(batch, frames)
            assert rows >= batch and padded >= frames
            assert padded - frames < graphs.FRAME_BUCKET
            if batch <= 4:
                assert rows == batch
            elif batch <= 64:
                assert rows % 8 == 0 and rows - batch < 8
            else:
                assert rows <= 1.5 * batch
    # Every batch size of an engine call (up to 512 rows) falls into a few dozen row buckets.
    assert len({graphs.bucket(b, 100)[0] for b in range(1, 513)}) == 4 + 8 + 6


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_sync_free_forward_equals_funasr_on_a_padded_bucket(tiny_model_dir, attention) -> None:
    """What the graph runs equals funasr's encoder for every valid frame, though rows and frames
    are padded to the bucket."""
    model = load_model(tiny_model_dir, torch.device("cpu")).model
    patch_attention(model, attention)
    gen = torch.Generator().manual_seed(5)
    lens = torch.tensor([37, 21, 5])
    feats = torch.randn(3, 37, 560, generator=gen)
    with torch.inference_mode():
        want, want_lens, _ = model.encoder(feats, lens)
        rows, padded = graphs.bucket(3, 37)
        big = torch.zeros(rows, padded, 560)
        big[:3, :37] = feats
        for b, n in enumerate(lens):
            big[b, n:] = 0.0
        big_lens = torch.ones(rows, dtype=torch.int64)
        big_lens[:3] = lens
        got = graphs.encode_without_sync(model.encoder, big, big_lens)
    assert torch.equal(want_lens, lens)
    for b, n in enumerate(lens.tolist()):
        torch.testing.assert_close(got[b, :n], want[b, :n], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_sync_free_decoder_equals_funasr_on_a_padded_bucket(tiny_model_dir, attention) -> None:
    model = load_model(tiny_model_dir, torch.device("cpu")).model
    patch_attention(model, attention)
    gen = torch.Generator().manual_seed(9)
    mem_lens, tok_lens = torch.tensor([30, 12, 7]), torch.tensor([9, 4, 0])
    memory = torch.randn(3, 30, 32, generator=gen)
    embeds = torch.randn(3, 9, 32, generator=gen)
    with torch.inference_mode():
        scores, want_hidden, _ = model.decoder(memory, mem_lens, embeds, tok_lens, return_hidden=True, return_both=True)
        rows, frames = graphs.bucket(3, 30)
        tokens = 16
        big_mem, big_emb = torch.zeros(rows, frames, 32), torch.zeros(rows, tokens, 32)
        big_mem[:3, :30], big_emb[:3, :9] = memory, embeds
        for b in range(3):
            big_mem[b, mem_lens[b]:] = 0.0
            big_emb[b, tok_lens[b]:] = 0.0
        big_mem_lens = torch.ones(rows, dtype=torch.int64)
        big_mem_lens[:3] = mem_lens
        big_tok_lens = torch.zeros(rows, dtype=torch.int64)
        big_tok_lens[:3] = tok_lens
        ids, hidden = graphs.decode_without_sync(model.decoder, big_mem, big_mem_lens, big_emb, big_tok_lens)
    for b, n in enumerate(tok_lens.tolist()):
        torch.testing.assert_close(hidden[b, :n], want_hidden[b, :n], atol=2e-5, rtol=2e-5)
        assert torch.equal(ids[b, :n], scores[b, :n].argmax(-1))


def test_a_shape_is_run_eagerly_until_it_is_asked_for_again() -> None:
    """First sightings answer None (eager) without building anything; the memory of shapes
    seen is bounded. (The capture on the second sighting needs a GPU: the tests below.)"""
    import contextlib

    cache = graphs._GraphCache("encoder", torch.device("cpu"), contextlib.nullcontext, None, max_graphs=4)

    def never(*_: object) -> None:
        raise AssertionError("a first sighting must not build inputs or capture")

    for rows in range(1, 1000):
        assert cache.replay((rows, 16, torch.float32), never, never, never) is None
    assert cache.captures == 0 and not cache.graphs
    assert len(cache.sightings) == 64 * 4  # the oldest shapes forgotten first
    assert (999, 16, torch.float32) in cache.sightings and (1, 16, torch.float32) not in cache.sightings


def test_a_full_cache_keeps_its_hot_graphs_against_shapes_that_do_not_come_back() -> None:
    """The admission rule, with captures stood in for (the real ones need a GPU): hot shapes
    stay cached, a stream of new shapes runs eagerly instead of capturing a graph per batch, and
    a shape that keeps coming back earns its place."""
    import contextlib
    from types import SimpleNamespace

    cache = graphs._GraphCache("decoder", torch.device("cpu"), contextlib.nullcontext, None, max_graphs=4)
    made: list[tuple] = []

    def fake_capture(key, make_inputs, forward):
        made.append(key)
        return SimpleNamespace(graph=SimpleNamespace(replay=lambda: None), inputs=[], outputs=(key,))

    cache._capture = fake_capture  # type: ignore[method-assign]
    fill = lambda inputs: None  # noqa: E731

    def ask(key):
        return cache.replay(key, None, None, fill)

    hot = [(r, 64, 16) for r in (1, 2, 3, 4)]
    for key in hot:
        assert ask(key) is None  # first request: eager
        assert ask(key) == (key,)  # second: captured and replayed
    for _ in range(5):
        for key in hot:
            assert ask(key) == (key,)
    assert made == hot
    for rows in range(5, 400):  # shapes that come back once more, then never again, while
        assert ask((rows, 80, 32)) is None  # the hot ones keep coming (counts are halved
        assert ask((rows, 80, 32)) is None  # every 64 requests here)
        for key in hot[rows % 2 :: 2]:
            assert ask(key) == (key,)
    assert made == hot and set(cache.graphs) == set(hot)
    comer = (9, 96, 48)
    answers = [ask(comer) for _ in range(60)]
    assert answers[0] is None and answers[-1] == (comer,)  # it came back often enough: admitted
    assert len(cache.graphs) == 4 and comer in cache.graphs and made[-1] == comer


def test_unsupported_encoders_are_named(tiny_model_dir) -> None:
    model = load_model(tiny_model_dir, torch.device("cpu")).model
    assert graphs.supported(model.encoder, model.decoder) is None
    assert "not a SANM encoder" in graphs.supported(model.decoder, model.decoder)
    assert "not a Paraformer SANM decoder" in graphs.supported(model.encoder, model.encoder)


def test_cpu_engine_runs_without_graphs(engine) -> None:
    assert engine.info()["cuda_graphs"] is False


@needs_cuda
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_graph_replays_follow_new_lengths(tiny_model_dir, clips, dtype) -> None:
    """Two batches in one bucket with different lengths: the second replay must use its own
    lengths (a stale mask would change the result), and both must match the eager encoder."""
    device = torch.device("cuda")
    eager = Engine(load_model(tiny_model_dir, device),
                   EngineSettings(model=str(tiny_model_dir), warmup=False, dtype=dtype, cuda_graphs=False), device)
    graphed = Engine(load_model(tiny_model_dir, device),
                     EngineSettings(model=str(tiny_model_dir), warmup=False, dtype=dtype, cuda_graphs=True), device)
    assert graphed.info()["cuda_graphs"] is True
    first = [clips[0][:16000], clips[1][:12000]]
    second = [clips[2][:15900], clips[3][:4000]]  # same bucket (2 rows, <= 1 s), other lengths
    tol = 1e-4 if dtype == "fp32" else 3e-2
    for batch in (first, second, first):
        want, got = eager.probe(batch), graphed.probe(batch)
        for w, g in zip(want, got, strict=True):
            assert w["enc"].shape == g["enc"].shape
            assert (w["enc"] - g["enc"]).abs().max() < tol * max(1.0, w["enc"].abs().max())
    assert len(graphed._graphs.encoders.graphs) == 1


@needs_cuda
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_shapes_captured_without_a_warm_up_forward_match_eager(tiny_model_dir, clips, dtype) -> None:
    """Only a network's first capture per dtype runs the warm-up forward; the shapes captured
    after it (other rows, frames and token widths) must still give the eager results."""
    device = torch.device("cuda")
    engines = [Engine(load_model(tiny_model_dir, device),
                      EngineSettings(model=str(tiny_model_dir), warmup=False, dtype=dtype, cuda_graphs=on), device)
               for on in (False, True)]
    batches = [[clips[0][:16000]], [clips[2][:40000], clips[3][:9000]],
               [clips[i % len(clips)][: 5000 + 3000 * i] for i in range(7)]]
    tol = 1e-4 if dtype == "fp32" else 3e-2
    texts: list[list] = [[], []]
    for batch in batches + batches:  # the second time round each shape is captured and replayed
        want, got = (engine.probe(batch) for engine in engines)
        for w, g in zip(want, got, strict=True):
            assert w["enc"].shape == g["enc"].shape
            assert (w["enc"] - g["enc"]).abs().max() < tol * max(1.0, w["enc"].abs().max())
        for engine, out in zip(engines, texts, strict=True):
            out += [r.token_ids for r in engine.transcribe(batch)]
    same = sum(a == b for a, b in zip(*texts, strict=True))
    # fp32: only a float-rounding tie could flip a token count; bf16 pads its products otherwise.
    assert same >= len(texts[0]) - (1 if dtype == "fp32" else 3)
    cached = engines[1]._graphs
    assert len(cached.encoders.graphs) >= len(batches) and len(cached.decoders.graphs) >= len(batches)
    assert len(cached.encoders.warmed) == 1 and len(cached.decoders.warmed) == 1


@needs_cuda
def test_engine_with_graphs_keeps_results(tiny_model_dir, clips) -> None:
    """Encoder and decoder graphs, with and without hotwords (the bias decoder reads the decoder
    graph's hidden states)."""
    device = torch.device("cuda")
    lists = [("丁七", "万丈"), (), ("hello",), (), ("七万",)][: len(clips)]
    runs, engines = [], []
    for on in (False, True):
        settings = EngineSettings(model=str(tiny_model_dir), warmup=False, dtype="fp32", cuda_graphs=on)
        engines.append(Engine(load_model(tiny_model_dir, device), settings, device))
        runs.append(engines[-1].transcribe(clips, hotwords=lists) + engines[-1].transcribe(clips))
    same = sum(a.token_ids == b.token_ids for a, b in zip(*runs, strict=True))
    assert same >= len(runs[0]) - 1  # fp32: only a float-rounding tie could flip a token count
    assert engines[1]._graphs.decoders.graphs and engines[1]._graphs.encoders.graphs
    assert engines[1].info()["cuda_graph_captures"] >= 2 and engines[0].info()["cuda_graph_captures"] == 0
