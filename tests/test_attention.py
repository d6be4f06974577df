"""Fused attention patches against funasr's own attention code."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

sanm_encoder = pytest.importorskip("funasr.models.sanm.encoder")
from funasr.models.paraformer.decoder import ParaformerSANMDecoder  # noqa: E402
from funasr.models.sanm.attention import (  # noqa: E402
    MultiHeadedAttentionCrossAtt,
    MultiHeadedAttentionSANM,
)

from asr.engine.attention import available_backends, cpu_bf16_native, patch_attention  # noqa: E402

DIM, HEADS = 64, 4
ATOL = 1e-5
# bf16 keeps 8 bits of mantissa; over a few blocks outputs of magnitude ~1-4 drift by a few 1e-2.
BF16_ATOL = 0.1


def _encoder(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return sanm_encoder.SANMEncoder(
        input_size=40,
        output_size=DIM,
        attention_heads=HEADS,
        linear_units=128,
        num_blocks=3,
        input_layer="pe",
        kernel_size=11,
        sanm_shfit=0,
        selfattention_layer_type="sanm",
    ).eval()


def _decoder(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ParaformerSANMDecoder(
        vocab_size=30,
        encoder_output_size=DIM,
        attention_heads=HEADS,
        linear_units=128,
        num_blocks=2,
        att_layer_num=2,
        kernel_size=11,
        sanm_shfit=0,
    ).eval()


def _inputs(seed: int, batch: int = 4, frames: int = 37, full: bool = False):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(batch, frames, 40, generator=gen)
    lens = torch.randint(1, frames + 1, (batch,), generator=gen)
    lens[0] = frames
    if full:
        lens[:] = frames
    return xs, lens


def _run_encoder(encoder, xs, lens, backend):
    model = copy.deepcopy(encoder)
    assert patch_attention(model, backend) == backend
    with torch.no_grad():
        return model(xs, lens)[0]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("full", [False, True])
def test_encoder_sdpa_equals_eager(seed: int, full: bool) -> None:
    encoder = _encoder(seed)
    xs, lens = _inputs(seed, full=full)
    eager = _run_encoder(encoder, xs, lens, "eager")
    sdpa = _run_encoder(encoder, xs, lens, "sdpa")
    # Padded positions too: the CIF tail token reads the first padded frame.
    torch.testing.assert_close(sdpa, eager, atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_decoder_sdpa_equals_eager(seed: int) -> None:
    decoder = _decoder(seed)
    gen = torch.Generator().manual_seed(seed)
    memory = torch.randn(3, 29, DIM, generator=gen)
    memory_lens = torch.tensor([29, 17, 5])
    embeds = torch.randn(3, 9, DIM, generator=gen)
    token_lens = torch.tensor([9, 4, 1])
    outs = {}
    for backend in ("eager", "sdpa"):
        model = copy.deepcopy(decoder)
        patch_attention(model, backend)
        with torch.no_grad():
            outs[backend] = model(
                memory, memory_lens, embeds, token_lens, return_hidden=True, return_both=True
            )
    for a, b in zip(outs["sdpa"][:2], outs["eager"][:2], strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_encoder_rowwise_equals_eager_on_every_clips_frames(seed: int) -> None:
    encoder = _encoder(seed)
    xs, lens = _inputs(seed)
    eager = _run_encoder(encoder, xs, lens, "eager")
    rowwise = _run_encoder(encoder, xs, lens, "rowwise")
    for row, n in enumerate(lens.tolist()):  # padded frames differ: nothing reads them
        torch.testing.assert_close(rowwise[row, :n], eager[row, :n], atol=ATOL, rtol=0)


def _batched_equals_alone(seed: int, backend: str):
    """A 23-frame clip in a batch of four padded to 61 frames gets the frames it gets alone, bit
    for bit. Returns (encoder, inputs, lengths, the batch's output)."""
    encoder = _encoder(seed)
    xs, lens = _inputs(seed, batch=4, frames=61)
    lens[1] = 23
    batched = _run_encoder(encoder, xs, lens, backend)
    alone = _run_encoder(encoder, xs[1:2, :23], lens[1:2], backend)
    assert torch.equal(batched[1, :23], alone[0])
    return encoder, xs, lens, batched


@pytest.mark.parametrize("seed", range(3))
def test_rowwise_gives_a_clip_the_same_result_whatever_its_batch(seed: int) -> None:
    """The point of 'rowwise': a clip's frames are bit for bit those it gets alone. funasr's
    batched arithmetic sums over the padded keys, so its results move with the padded length."""
    _batched_equals_alone(seed, "rowwise")
    decoder = _decoder(seed)
    patch_attention(decoder, "rowwise")
    gen = torch.Generator().manual_seed(seed)
    memory, embeds = torch.randn(3, 29, DIM, generator=gen), torch.randn(3, 9, DIM, generator=gen)
    with torch.no_grad():
        batched = decoder(memory, torch.tensor([29, 17, 5]), embeds, torch.tensor([9, 4, 1]),
                          return_hidden=True)[0]
        single = decoder(memory[1:2, :17], torch.tensor([17]), embeds[1:2, :4], torch.tensor([4]),
                         return_hidden=True)[0]
    torch.testing.assert_close(batched[1, :4], single[0], atol=ATOL, rtol=0)


@pytest.mark.skipif(not cpu_bf16_native(), reason="this CPU has no native bf16 products")
@pytest.mark.parametrize("seed", range(3))
def test_rowwise_bf16_keeps_a_clip_independent_of_its_batch_and_close_to_fp32(seed: int) -> None:
    """The int8 CPU path's attention: products in bf16, still one clip at a time over its own keys."""
    encoder, xs, lens, bf16 = _batched_equals_alone(seed, "rowwise-bf16")
    eager = _run_encoder(encoder, xs, lens, "eager")
    for row, n in enumerate(lens.tolist()):
        cos = torch.nn.functional.cosine_similarity(bf16[row, :n].flatten(), eager[row, :n].flatten(), dim=0)
        assert cos > 0.999, (row, float(cos))
        assert not torch.equal(bf16[row, :n], eager[row, :n])  # bf16 did run


def test_decoder_rowwise_equals_eager() -> None:
    decoder = _decoder(0)
    gen = torch.Generator().manual_seed(0)
    memory, embeds = torch.randn(3, 29, DIM, generator=gen), torch.randn(3, 9, DIM, generator=gen)
    outs = {}
    for backend in ("eager", "rowwise"):
        model = copy.deepcopy(decoder)
        patch_attention(model, backend)
        with torch.no_grad():
            outs[backend] = model(memory, torch.tensor([29, 17, 5]), embeds, torch.tensor([9, 4, 1]),
                                  return_hidden=True)[0]
    for row, n in enumerate([9, 4, 1]):
        torch.testing.assert_close(outs["rowwise"][row, :n], outs["eager"][row, :n], atol=ATOL, rtol=0)


def test_patch_reaches_every_attention_and_keeps_fsmn() -> None:
    encoder, decoder = _encoder(), _decoder()
    model = torch.nn.ModuleDict({"encoder": encoder, "decoder": decoder})
    patch_attention(model, "sdpa")
    sanm = [m for m in model.modules() if isinstance(m, MultiHeadedAttentionSANM)]
    cross = [m for m in model.modules() if isinstance(m, MultiHeadedAttentionCrossAtt)]
    assert len(sanm) == 3 and len(cross) == 2
    assert all("forward" in m.__dict__ for m in sanm + cross)
    # Removing the FSMN branch must change the output: the patched forward still uses it.
    xs, lens = _inputs(0)
    with torch.no_grad():
        before = encoder(xs, lens)[0]
        for m in sanm:
            m.fsmn_block.weight.zero_()
        after = encoder(xs, lens)[0]
    assert (before - after).abs().max() > 1e-3
    patch_attention(model, "eager")
    assert not any("forward" in m.__dict__ for m in sanm + cross)


def test_fully_masked_rows_give_zeros_like_funasr() -> None:
    torch.manual_seed(0)
    attn = MultiHeadedAttentionSANM(HEADS, DIM, DIM, 0.0, kernel_size=5).eval()
    x = torch.randn(3, 8, DIM)
    mask = torch.ones(3, 1, 8)
    mask[1, :, 3:] = 0
    mask[2] = 0  # a clip with no frames at all
    with torch.no_grad():
        eager = attn(x, mask)
        patch_attention(attn, "sdpa")
        sdpa = attn(x, mask)
    assert torch.isfinite(sdpa).all()
    torch.testing.assert_close(sdpa, eager, atol=ATOL, rtol=0)

    cross = MultiHeadedAttentionCrossAtt(HEADS, DIM, 0.0).eval()
    query, memory = torch.randn(2, 5, DIM), torch.randn(2, 7, DIM)
    row_mask = torch.ones(2, 5, 7)
    row_mask[0, 2] = 0  # one query row without keys
    row_mask[1, :, 4:] = 0
    with torch.no_grad():
        eager = cross(query, memory, row_mask)
        patch_attention(cross, "sdpa")
        sdpa = cross(query, memory, row_mask)
    torch.testing.assert_close(sdpa, eager, atol=ATOL, rtol=0)


def test_ret_attn_still_returns_the_attention_matrix() -> None:
    cross = MultiHeadedAttentionCrossAtt(HEADS, DIM, 0.0).eval()
    query, memory, mask = torch.randn(2, 5, DIM), torch.randn(2, 7, DIM), torch.ones(2, 1, 7)
    with torch.no_grad():
        ref_out, ref_attn = cross(query, memory, mask, ret_attn=True)
        patch_attention(cross, "sdpa")
        out, attn = cross(query, memory, mask, ret_attn=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(attn, ref_attn)


def test_mask_digest_is_shared_by_layers() -> None:
    encoder = _encoder()
    patch_attention(encoder, "sdpa")
    xs, lens = _inputs(1)
    calls = []
    real_tolist = torch.Tensor.tolist

    def counting_tolist(self):
        if self.dtype == torch.bool:  # the mask digest's flags (funasr reads lengths itself)
            calls.append(self.shape)
        return real_tolist(self)

    torch.Tensor.tolist = counting_tolist
    try:
        with torch.no_grad():
            encoder(xs, lens)
    finally:
        torch.Tensor.tolist = real_tolist
    assert len(calls) == 1  # one host sync for three layers


def test_bf16_close_to_fp32() -> None:
    encoder = _encoder(3)
    xs, lens = _inputs(3)
    ref = _run_encoder(encoder, xs, lens, "eager")
    for backend in ("eager", "sdpa"):
        model = copy.deepcopy(encoder).to(torch.bfloat16)
        patch_attention(model, backend)
        with torch.no_grad():
            out = model(xs.bfloat16(), lens)[0].float()
        assert torch.isfinite(out).all()
        assert (out - ref).abs().max() < BF16_ATOL, backend


def test_unavailable_backend_falls_back_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("fallback is only forced on machines without CUDA")
    encoder = _encoder()
    with caplog.at_level(logging.INFO, logger="asr.engine.attention"):
        assert patch_attention(encoder, "varlen") == "sdpa"
        assert patch_attention(encoder, "flash-attn") == "sdpa"
        assert patch_attention(encoder, "auto") == "sdpa"
    assert len(caplog.records) == 3 and "no CUDA device" in caplog.records[0].getMessage()
    assert available_backends() == ["sdpa", "rowwise", *(["rowwise-bf16"] if cpu_bf16_native() else []), "eager"]
    with pytest.raises(ValueError, match="attention backend"):
        patch_attention(encoder, "xformers")


def test_rowwise_bf16_falls_back_to_rowwise_on_a_cpu_without_bf16(monkeypatch, caplog) -> None:
    import asr.engine.attention as attention

    monkeypatch.setattr(attention, "cpu_bf16_native", lambda: False)
    with caplog.at_level(logging.INFO, logger="asr.engine.attention"):
        assert patch_attention(_encoder(), "rowwise-bf16") == "rowwise"
    assert "no native bf16" in caplog.records[-1].getMessage()


# --- CUDA only: the lead runs these on the GPU machine -------------------------------------------


def _cuda_backends() -> list[str]:
    return [b for b in available_backends() if b in ("varlen", "flash-attn")]


@pytest.mark.parametrize("backend", ["varlen", "flash-attn", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_backends_match_eager(backend: str, dtype: torch.dtype) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if backend != "sdpa" and backend not in _cuda_backends():
        pytest.skip(f"{backend} is not available in this environment")
    encoder, decoder = _encoder(5).cuda(), _decoder(5).cuda()
    xs, lens = _inputs(5, batch=6, frames=200)
    xs, lens = xs.cuda(), lens.cuda()
    lens[3] = 0  # a clip without frames must give zeros, not NaN
    gen = torch.Generator().manual_seed(5)
    embeds = torch.randn(6, 40, DIM, generator=gen).cuda()
    token_lens = torch.tensor([40, 12, 3, 1, 25, 7]).cuda()

    def run(name: str):
        enc, dec = copy.deepcopy(encoder), copy.deepcopy(decoder)
        assert patch_attention(enc, name) == name and patch_attention(dec, name) == name
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
            enc_out = enc(xs, lens)[0]
            dec_out = dec(enc_out, lens.clamp(min=1), embeds, token_lens, return_hidden=True)[0]
        return enc_out.float(), dec_out.float()

    ref = run("eager")
    got = run(backend)
    for a, b in zip(got, ref, strict=True):
        assert torch.isfinite(a).all()
        assert (a - b).abs().max() < BF16_ATOL


def _fake_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, seqused_k=None, **_):
    """Reference varlen attention on CPU: checks the sequence layout the fused path builds."""
    out = torch.zeros_like(q)
    scale = q.size(-1) ** -0.5 if scale is None else scale
    assert cu_q.dtype == torch.int32 and cu_k.dtype == torch.int32
    assert cu_q[-1] == q.size(0) and cu_k[-1] == k.size(0)
    for i in range(len(cu_q) - 1):
        qs, qe, ks, ke = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        assert 0 <= qe - qs <= max_q and 0 <= ke - ks <= max_k
        if seqused_k is not None:
            ke = ks + int(seqused_k[i])
        if qe == qs or ke == ks:
            continue
        scores = torch.einsum("qhd,khd->hqk", q[qs:qe], k[ks:ke]) * scale
        out[qs:qe] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[ks:ke])
    return out


@pytest.mark.parametrize("layout", ["seqused_k", "filler", "filler-no-scale-arg", "flash-attn"])
def test_varlen_layout_on_cpu_reference(monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    import asr.engine.attention as attention

    backend = "flash-attn" if layout == "flash-attn" else "varlen"
    monkeypatch.setattr(attention, "_VARLEN", _fake_varlen)
    monkeypatch.setattr(attention, "_VARLEN_SEQUSED_K", layout == "seqused_k")
    if layout == "filler-no-scale-arg":
        monkeypatch.setattr(attention, "_VARLEN_PARAMS", set())
    monkeypatch.setattr(
        attention,
        "_FLASH_ATTN",
        lambda q, k, v, cu_q, cu_k, mq, mk, dropout_p, softmax_scale: _fake_varlen(
            q, k, v, cu_q, cu_k, mq, mk, scale=softmax_scale
        ),
    )
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(4, HEADS, 6, 16, generator=gen)
    k = torch.randn(4, HEADS, 9, 16, generator=gen)
    v = torch.randn(4, HEADS, 9, 16, generator=gen)
    key_lens = torch.tensor([9, 4, 0, 1], dtype=torch.int32)
    got = attention._varlen_attend(backend, q, k, v, key_lens, 0.25)
    mask = (torch.arange(9)[None, :] < key_lens[:, None])[:, None, None, :]
    scores = (q @ k.transpose(-1, -2) * 0.25).masked_fill(~mask, float("-inf"))
    ref = (scores.softmax(-1).masked_fill(~mask, 0.0) @ v).transpose(1, 2).reshape(4, 6, -1)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("shift", [0, 3])
@pytest.mark.parametrize("masked", [True, False])
def test_cpu_fsmn_memory_equals_funasrs_to_the_bit(shift: int, masked: bool) -> None:
    """The CPU's FSMN memory (depthwise convolution on the values' own layout) is funasr's
    `forward_fsmn` bit for bit, padded frames included; the patched SANM forward uses it."""
    from asr.engine.attention import _fsmn_channels_last

    torch.manual_seed(shift)
    module = MultiHeadedAttentionSANM(HEADS, 48, DIM, 0.0, 11, sanm_shfit=shift).eval()
    x = torch.randn(4, 37, 48)
    lens = torch.tensor([37, 20, 1, 9])
    mask = (torch.arange(37)[None] < lens[:, None])[:, None, :] if masked else None
    with torch.no_grad():
        _, _, _, v = module.forward_qkv(x)  # a strided slice of the q/k/v projection
        want = module.forward_fsmn(v, mask)
        got = _fsmn_channels_last(module, v, mask)
        assert got.is_contiguous() and torch.equal(got, want)
        reference = module(x, mask)
        patch_attention(torch.nn.ModuleList([module]), "rowwise")

        def not_called(*args, **kwargs):
            raise AssertionError("funasr's forward_fsmn ran")

        module.forward_fsmn = not_called
        patched = module(x, mask)
    rows = lens.tolist() if masked else [37] * 4
    for row, n in enumerate(rows):
        torch.testing.assert_close(patched[row, :n], reference[row, :n], atol=ATOL, rtol=0)


def test_cpu_encoder_layer_equals_funasrs_to_the_bit() -> None:
    """The CPU's encoder layer (no `1.0 *` passes, residuals added in place) gives funasr's
    EncoderLayerSANM outputs bit for bit, on the same sublayers; the first layer (no residual,
    its input is wider) too."""
    from types import MethodType

    from asr.engine.attention import _encoder_layer_forward

    encoder = _encoder(1)
    xs, lens = _inputs(1)
    with torch.no_grad():
        mask = (torch.arange(xs.size(1))[None] < lens[:, None])[:, None, :]
        first = encoder.encoders0[0]
        inputs = torch.randn(4, xs.size(1), first.in_size)
        layers = [(first, inputs), (encoder.encoders[0], torch.randn(4, xs.size(1), DIM))]
        for layer, h in layers:
            want = layer(h, mask)[0]
            layer.forward = MethodType(_encoder_layer_forward, layer)
            got = layer(h, mask)[0]
            assert torch.equal(got, want)
            assert not torch.equal(got, h[..., :DIM])  # the layer did run


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("self_attention", [True, False])
def test_rowwise_products_equal_funasrs_per_clip_arithmetic(bf16: bool, self_attention: bool) -> None:
    """`_rowwise_attend` against the plain per-clip loop it stands for (funasr's arithmetic on
    each clip's own keys; bf16 products with fp32 softmax), bit for bit in fp32, and the rows it
    does not compute (padded queries, a clip without keys) exactly zero."""
    from asr.engine.attention import _rowwise_attend

    gen = torch.Generator().manual_seed(7)
    k, v = torch.randn(4, 2, 90, 32, generator=gen), torch.randn(4, 2, 90, 32, generator=gen)
    q = torch.randn(4, 90, 2, 32, generator=gen).transpose(1, 2)  # a strided view, as forward_qkv gives
    lens = torch.tensor([90, 41, 0, 7], dtype=torch.int32)
    scale = 32**-0.5
    want = torch.zeros(4, 90, 64)
    dtype = torch.bfloat16 if bf16 else torch.float32
    for b, n in enumerate(lens.tolist()):
        rows = min(n, 90) if self_attention else 90
        if n == 0:
            continue
        qb = (q[b, :, :rows] * scale).to(dtype)
        scores = torch.matmul(qb, k[b, :, :n].to(dtype).transpose(-2, -1))
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        want[b, :rows] = torch.matmul(weights, v[b, :, :n].to(dtype)).transpose(0, 1).reshape(rows, 64).float()
    for _ in range(3):
        torch.full((4, 90, 64), float("nan")).sum()  # freed NaN memory the output may reuse
        got = _rowwise_attend(q, k, v, lens, scale, self_attention, bf16=bf16)
        assert got.dtype == torch.float32
        if bf16:  # padded to ROWWISE_STEP: the same sums, possibly blocked otherwise (a bf16 ulp)
            torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)
            assert torch.equal(got == 0, want == 0)
        else:
            assert torch.equal(got, want)


def test_cpu_decoder_fsmn_equals_funasrs_to_the_bit() -> None:
    """The decoder's FSMN block on the CPU: funasr's output and cache values bit for bit; with a
    cache (streaming) funasr's own code runs."""
    from funasr.models.sanm.attention import MultiHeadedAttentionSANMDecoder

    torch.manual_seed(4)
    module = MultiHeadedAttentionSANMDecoder(DIM, 0.0, 11).eval()
    x = torch.randn(3, 17, DIM)
    mask = (torch.arange(17)[None] < torch.tensor([17, 9, 1])[:, None])[:, None, :]
    with torch.no_grad():
        want, want_cache = module(x, mask)
        patch_attention(torch.nn.ModuleList([module]), "rowwise")
        assert "forward" in module.__dict__
        got, got_cache = module(x, mask)
        assert torch.equal(got, want) and torch.equal(got_cache, want_cache)
        step, _ = module(x[:, -1:], None, cache=got_cache)
        reference, _ = type(module).forward(module, x[:, -1:], None, cache=want_cache)
        assert torch.equal(step, reference)


def test_cpu_softmax_of_bf16_scores_is_the_fp32_softmax_rounded_once() -> None:
    """The bf16 per-clip attention takes softmax of its bf16 scores in bf16 (no casting passes),
    relying on torch's CPU kernel to compute each row in fp32 and round once: the values of
    softmax(dtype=float32).to(bf16), which it computed before. Masked keys included."""
    gen = torch.Generator().manual_seed(11)
    for t_q, t_k in ((448, 448), (96, 512), (37, 33), (1, 7)):
        scores = (torch.randn(4, t_q, t_k, generator=gen) * 6).to(torch.bfloat16)
        scores[..., t_k - t_k // 5 :] = float("-inf")
        want = torch.softmax(scores, dim=-1, dtype=torch.float32).to(torch.bfloat16)
        assert torch.equal(torch.softmax(scores, dim=-1), want), (t_q, t_k)


def test_rowwise_bf16_products_take_few_shapes_and_ignore_keys_past_a_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bf16 path pads each clip's keys and query rows to a multiple of ROWWISE_STEP (oneDNN
    keeps a compiled product per shape: one per clip length grew a long recording's process by
    hundreds of MB). The keys it reads past a clip's end, here large garbage, get no weight: the
    result is the products over the clip's own keys (to a bf16 ulp: oneDNN may block the padded
    sums otherwise)."""
    from asr.engine import attention
    from asr.engine.attention import ROWWISE_STEP, _rowwise_attend

    gen = torch.Generator().manual_seed(11)
    width = 100
    k, v = torch.randn(3, 2, width, 32, generator=gen), torch.randn(3, 2, width, 32, generator=gen)
    q = torch.randn(3, 2, width, 32, generator=gen)
    lens = [100, 37, 70]
    for b, n in enumerate(lens):
        k[b, :, n:], v[b, :, n:] = 1e4, -1e4  # what a batch holds past a shorter clip's end
    scale = 32**-0.5
    shapes: list[tuple[int, ...]] = []
    real_matmul = torch.matmul

    def spy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        shapes.append((*a.shape[-2:], b.shape[-1]))
        return real_matmul(a, b)

    for self_attention in (True, False):
        shapes.clear()
        monkeypatch.setattr(attention.torch, "matmul", spy)
        got = _rowwise_attend(q, k, v, torch.tensor(lens), scale, self_attention, bf16=True)
        monkeypatch.setattr(attention.torch, "matmul", real_matmul)
        # (rows, 32, keys) and (rows, keys, 32): with a head size of 32 every dimension is a multiple
        assert shapes and all(d % ROWWISE_STEP == 0 for s in shapes for d in s), shapes
        for b, n in enumerate(lens):
            rows = n if self_attention else width
            qb = (q[b, :, :rows] * scale).to(torch.bfloat16)
            scores = real_matmul(qb, k[b, :, :n].to(torch.bfloat16).transpose(-2, -1))
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(torch.bfloat16)
            want = real_matmul(weights, v[b, :, :n].to(torch.bfloat16)).transpose(0, 1).reshape(rows, 64).float()
            torch.testing.assert_close(got[b, :rows], want, atol=1e-2, rtol=1e-2)


def test_cpu_fsmn_convolves_few_widths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU's FSMN convolution runs over `step_rung` frames (zeros past the clip's), so nearby
    lengths share one oneDNN convolution; each output stays funasr's (the test above)."""
    from asr.engine import attention
    from asr.engine.attention import _fsmn_channels_last, step_rung

    module = MultiHeadedAttentionSANM(HEADS, 48, DIM, 0.0, 11, sanm_shfit=0).eval()
    widths = []
    real_conv2d = attention.F.conv2d

    def spy(x: torch.Tensor, *args: object) -> torch.Tensor:
        widths.append(x.shape[-1])
        return real_conv2d(x, *args)

    monkeypatch.setattr(attention.F, "conv2d", spy)
    with torch.no_grad():
        for steps in (33, 35, 36):
            _, _, _, v = module.forward_qkv(torch.randn(2, steps, 48))
            assert _fsmn_channels_last(module, v, None).shape == (2, steps, DIM)
    assert step_rung(33) == step_rung(36) == 36 and widths == [36 + 10] * 3
