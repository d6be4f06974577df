"""Silero VAD as a PyTorch network, for deciding many frames on the GPU at once.

The ONNX form (`SileroVad` on CPU) runs the whole network once per 32 ms frame: its recurrent
state makes every call depend on the one before. But only the last layer is recurrent. The
front (a short-time Fourier transform as a convolution, then four small convolutions) depends
on each frame's own 576 samples alone, so here the fronts of every frame of every lane or
stream are one batched call, and the recurrence is one LSTM call over all of them (cuDNN on the
GPU). A 60-minute recording's 112,500 frames are then a handful of kernels instead of 112,500
network calls, and a thousand live connections' frames of one tick a few more.

The weights are the package's own (`silero_vad.jit`: the network and weights of its ONNX file;
the layout is the one the package's tinygrad port documents). Probabilities agree with
onnxruntime's to about 1e-5 on the CPU (tests/test_silero_torch.py); on the GPU, cuDNN may use
TF32, so a frame whose probability sits within about 1e-3 of a threshold can be decided the
other way, which moves a segment's edge by one frame (32 ms).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from asr.errors import ModelLoadError

FRAME = 512  # samples Silero decides at a time (32 ms at 16 kHz)
CONTEXT = 64  # samples of the frame before that it sees in front of each frame
WINDOW = FRAME + CONTEXT
_HIDDEN = 128


def weights_path() -> Path:
    from asr.pipeline.vad import silero_file

    return silero_file("silero_vad.jit")


# The packaged TorchScript model's 16 kHz parameters -> this module's (its `_model_8k` is unused).
_NAMES = {
    "_model.stft.forward_basis_buffer": "stft_conv.weight",
    **{f"_model.encoder.{i}.reparam_conv.{p}": f"conv{i + 1}.{p}" for i in range(4) for p in ("weight", "bias")},
    **{f"_model.decoder.rnn.{p}": f"lstm.{p}_l0" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},
    "_model.decoder.decoder.2.weight": "final_conv.weight",
    "_model.decoder.decoder.2.bias": "final_conv.bias",
}


class SileroNet(torch.nn.Module):
    """Silero VAD v5/v6 at 16 kHz: `front` per frame, `lstm` across frames, `head` per frame."""

    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = torch.nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = torch.nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = torch.nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = torch.nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = torch.nn.Conv1d(64, 128, 3, padding=1)
        self.lstm = torch.nn.LSTM(_HIDDEN, _HIDDEN, batch_first=True)
        self.final_conv = torch.nn.Conv1d(128, 1, 1)

    @classmethod
    def load(cls, device: str | torch.device = "cpu") -> SileroNet:
        try:
            # The same network and weights as the package's ONNX file (the CPU path), in the form
            # torch reads; only its parameters are taken, the TorchScript code is not run.
            scripted = torch.jit.load(str(weights_path()), map_location="cpu")
            weights = {_NAMES[k]: v for k, v in scripted.state_dict().items() if k in _NAMES}
            net = cls()
            net.load_state_dict(weights)
        except ModelLoadError:
            raise
        except Exception as exc:  # a corrupt or changed weights file
            raise ModelLoadError(f"Silero VAD could not be loaded: {exc}") from exc
        net = net.to(device).eval().requires_grad_(False)
        net.lstm.flatten_parameters()  # one weight block for cuDNN (else copied together on every call)
        return net

    def front(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, 576) frames with their context -> (N, 128) LSTM inputs."""
        x = F.pad(windows, (0, CONTEXT), mode="reflect").unsqueeze(1)
        x = self.stft_conv(x)
        x = torch.sqrt(x[:, :129] ** 2 + x[:, 129:] ** 2)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return F.relu(self.conv4(x)).squeeze(-1)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., 128) LSTM outputs -> (...) speech probabilities."""
        weight = self.final_conv.weight[:, :, 0]
        return torch.sigmoid(F.linear(F.relu(hidden), weight, self.final_conv.bias)).squeeze(-1)


class TorchSilero:
    """Silero VAD decisions with the PyTorch network on one device, for `SileroVad`'s two uses:
    lanes of a recording (`lane_probs`) and one step of many live streams (`stream_probs`).

    Its GPU work runs on a stream of its own, so a VAD call never waits behind the recogniser's
    batches on the default stream. Thread-safe: calls only read the network."""

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.net = SileroNet.load(self.device)
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _context(self) -> Any:
        if self._stream is None:
            return contextlib.nullcontext()
        return torch.cuda.stream(self._stream)

    def lane_probs(self, ext: np.ndarray, n_lanes: int, lane: int, steps: int) -> np.ndarray:
        """Lane i is `ext[i * lane : i * lane + steps * 512 + 64]` (its audio with the 64 samples
        before it; lanes overlap by their warm-up): the signal crosses to the device once and the
        lanes are views of it there. Returns (n_lanes, steps) probabilities, every lane from a
        zero state."""
        with torch.inference_mode(), self._context():
            audio = torch.from_numpy(ext).to(self.device)
            lanes = audio.unfold(0, steps * FRAME + CONTEXT, lane)[:n_lanes]
            windows = lanes.unfold(1, WINDOW, FRAME)[:, :steps]  # (L, steps, 576), a view
            feats = self.net.front(windows.reshape(-1, WINDOW)).view(n_lanes, steps, _HIDDEN)
            hidden, _ = self.net.lstm(feats)
            return self.net.head(hidden).float().cpu().numpy()

    def stream_probs(
        self, windows: np.ndarray, counts: Sequence[int], state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One step of many streams: `windows` (sum(counts), 576) holds each stream's next
        `counts[i]` frames (with context) in stream order; `state` (2, S, 128) their recurrent
        states (h, c). Returns the frames' probabilities (flat, in `windows` order) and the
        states after each stream's last frame."""
        lengths = torch.as_tensor(counts, dtype=torch.int64)
        with torch.inference_mode(), self._context():
            feats = self.net.front(torch.from_numpy(windows).to(self.device))
            per_stream = torch.split(feats, list(counts))
            padded = torch.nn.utils.rnn.pad_sequence(per_stream, batch_first=True)
            packed = torch.nn.utils.rnn.pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
            h0, c0 = torch.from_numpy(state).to(self.device).unbind(0)
            out, (h, c) = self.net.lstm(packed, (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))
            hidden, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
            mask = torch.arange(hidden.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
            probs = self.net.head(hidden[mask.to(self.device)])
            both = torch.cat((probs, h.reshape(-1), c.reshape(-1))).cpu().numpy()
        n = len(windows)
        return both[:n], both[n:].reshape(2, len(counts), _HIDDEN)
