"""The fused FSMN memory kernel against funasr's own (CUDA only: the kernel is Triton)."""

from __future__ import annotations

import pytest
import torch

from asr.engine import fsmn
from asr.engine.attention import patch_attention

pytestmark = pytest.mark.skipif(
    not fsmn.available(torch.device("cuda")), reason="the fused FSMN kernel needs a CUDA GPU and Triton"
)


def _module(shift: int, in_feat: int = 48, feat: int = 64):
    from funasr.models.sanm.attention import MultiHeadedAttentionSANM

    torch.manual_seed(shift + in_feat)
    return MultiHeadedAttentionSANM(4, in_feat, feat, 0.0, 11, sanm_shfit=shift).eval().cuda()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shift", [0, 3])
def test_kernel_matches_funasr_fsmn(dtype, shift) -> None:
    module = _module(shift).to(dtype)
    x = torch.randn(4, 77, 48, device="cuda", dtype=dtype)
    lens = torch.tensor([77, 40, 1, 13], device="cuda", dtype=torch.int32)
    mask = (torch.arange(77, device="cuda")[None] < lens[:, None])[:, None, :]
    with torch.no_grad():
        _, _, _, v = module.forward_qkv(x)  # a strided slice of the q/k/v projection
        want = (module.forward_fsmn(v, mask) + module.linear_out.bias).float()
        got = fsmn.fsmn_memory(v, module.fsmn_block.weight, lens, module.pad_fn.padding[0], module.linear_out.bias)
    assert got.dtype == dtype and got.shape == v.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", ["sdpa", "varlen"])
def test_patched_attention_with_fused_fsmn_equals_funasr(backend) -> None:
    """The whole SANM attention (fused FSMN + accumulate-onto projection) against funasr's."""
    reference = _module(0, in_feat=64)
    patched = _module(0, in_feat=64)
    patched.load_state_dict(reference.state_dict())
    holder = torch.nn.ModuleList([patched])
    patch_attention(holder, backend)
    dtype = torch.float32 if backend == "sdpa" else torch.bfloat16
    reference.to(dtype)
    patched.to(dtype)
    x = torch.randn(3, 50, 64, device="cuda", dtype=dtype)
    lens = torch.tensor([50, 20, 7], device="cuda")
    mask = (torch.arange(50, device="cuda")[None] < lens[:, None])[:, None, :]
    with torch.no_grad():
        want = reference(x, mask).float()
        got = patched(x, mask).float()
    for b, n in enumerate(lens.tolist()):
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(got[b, :n], want[b, :n], atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_feed_forward_with_fused_relu_equals_funasr(dtype) -> None:
    from funasr.models.transformer.positionwise_feed_forward import PositionwiseFeedForward

    torch.manual_seed(1)
    reference = PositionwiseFeedForward(64, 256, 0.0).eval().cuda().to(dtype)
    patched = PositionwiseFeedForward(64, 256, 0.0).eval().cuda().to(dtype)
    patched.load_state_dict(reference.state_dict())
    patch_attention(torch.nn.ModuleList([patched]), "sdpa")
    assert "forward" in patched.__dict__
    x = torch.randn(2, 30, 64, device="cuda", dtype=dtype)
    with torch.no_grad():
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(patched(x).float(), reference(x).float(), atol=tol, rtol=tol)
