"""The timestamp head's BLSTM: the fused kernel (asr/lstm.py) against cuDNN, per call.

    python benchmarks/lstm_kernel.py        # on a CUDA GPU

Prints GPU time (CUDA events over 5 calls after 2 warm-up calls) and host time (median time for
the call to return) for timestamp-head shapes, and the fused kernel's relative difference from
cuDNN in the same precision.
"""

from __future__ import annotations

import time

import torch

from asr.engine.cif import _blstm_within_lengths

SHAPES = [(1, 500), (8, 1500), (40, 1500), (128, 450), (400, 150)]  # (clips, upsampled steps)


def _time(kernel: str, lstm: torch.nn.LSTM, x: torch.Tensor, lens: torch.Tensor, calls: int = 5) -> tuple[float, float]:
    for _ in range(2):
        _blstm_within_lengths(lstm, x, lens, kernel)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host = []
    start.record()
    for _ in range(calls):
        t = time.perf_counter()
        _blstm_within_lengths(lstm, x, lens, kernel)
        host.append(time.perf_counter() - t)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls, 1000 * sorted(host)[calls // 2]


def main() -> None:
    torch.manual_seed(0)
    print(torch.cuda.get_device_name())
    lstm = torch.nn.LSTM(512, 512, batch_first=True, bidirectional=True).to("cuda", torch.bfloat16)
    print("| batch x steps | cuDNN GPU / host ms | fused GPU / host ms | relative difference |")
    print("|---|---|---|---|")
    for batch, steps in SHAPES:
        x = torch.randn(batch, steps, 512, device="cuda", dtype=torch.bfloat16)
        lens = torch.full((batch,), steps, device="cuda")
        cudnn, fused = _time("cudnn", lstm, x, lens), _time("fused", lstm, x, lens)
        want = _blstm_within_lengths(lstm, x, lens, "cudnn").float()
        diff = (_blstm_within_lengths(lstm, x, lens, "fused").float() - want).norm() / want.norm()
        print(f"| {batch} x {steps} | {cudnn[0]:.1f} / {cudnn[1]:.1f} | {fused[0]:.1f} / {fused[1]:.1f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
