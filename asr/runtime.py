"""Process-wide settings, applied once where a process starts (the CLI's main, the server's
launch), never as a side effect of building an object."""

from __future__ import annotations

import logging
import os
import sys
import threading

from asr.settings import EngineSettings, Settings

_configured = False
log = logging.getLogger(__name__)


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc's `malloc_trim`); False where there
    is no glibc. Loading a model leaves hundreds of MB of freed allocations (the checkpoint's
    tensors, the fp32 weights the int8 layers replaced) in the heap, where the RSS still counts
    them: the full model's int8 engine held 1,377 MB after loading, 600 MB after a trim."""
    import ctypes

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def own_process() -> bool:
    """Whether one of the product's entry points (the CLI, the server, a bench) started this
    process. Only then may the pipeline start decoding processes on its own: they are spawned,
    and a spawned child re-imports the parent's main module, which a user's script without an
    `if __name__ == "__main__":` guard would run again."""
    return _configured


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share), not the machine's."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def configure_process(settings: Settings) -> None:
    """Torch's CPU threads (`engine.num_threads`, else the cores this process may use) and, on a
    GPU box, a short GIL switch interval (`engine.gil_switch_ms`): while another thread turns
    results into text, each of the GPU thread's re-acquires waits out the interval (5 ms by
    default; 15 ms GPU gaps were measured between batches on an H100)."""
    global _configured
    _configured = True
    configure_torch(settings.engine)


def configure_torch(engine: EngineSettings) -> None:
    """The torch and GIL part of `configure_process`, for a process that runs an engine only
    (the engine process, asr/engine/process.py)."""
    import torch

    if engine.num_threads:
        torch.set_num_threads(engine.num_threads)
    elif engine.device == "cpu" or not torch.cuda.is_available():
        torch.set_num_threads(usable_cores())
    if engine.device != "cpu" and torch.cuda.is_available():
        sys.setswitchinterval(min(sys.getswitchinterval(), engine.gil_switch_ms / 1000))


def start_cuda_warmup(engine: EngineSettings) -> threading.Thread | None:
    """CUDA's one-time costs paid on a thread while the caller imports funasr's model classes and
    reads the weights (a command's cold start): the context, cuBLAS in the engine's dtype,
    cuDNN's convolution and LSTM libraries, and Triton's (its cache key hashes Triton's own
    libraries, ~0.2 s, once per process; then the FSMN kernel of the released model's shape comes
    from Triton's disk cache). Each is process-wide, so the engine's first call finds them ready;
    torch's ops and the hashing release the GIL, so the imports go on beside them. None where the
    engine will not run on a GPU."""
    if engine.device == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda" if engine.device == "auto" else engine.device)
    dtype = {"fp16": torch.float16, "fp32": torch.float32}.get(engine.dtype, torch.bfloat16)

    def warm() -> None:
        try:
            with torch.inference_mode():
                x = torch.ones(1, 64, 256, device=device)
                torch.matmul(x.to(dtype), x[0].T.to(dtype))
                torch.matmul(x, x[0].T)
                torch.nn.functional.conv1d(x, x.new_ones(64, 1, 11), groups=64)
                lstm = torch.nn.LSTM(16, 16, batch_first=True, bidirectional=True).to(device)
                lstm(x[..., :16])
                from asr.engine import fsmn

                if fsmn.available(device):
                    v = torch.ones(1, 16, 512, device=device, dtype=dtype)
                    lens = torch.tensor([16], device=device, dtype=torch.int32)
                    fsmn.fsmn_memory(v, v.new_ones(512, 1, 11), lens, 5, v.new_ones(512))
                torch.cuda.synchronize(device)
        except Exception as exc:  # noqa: BLE001 - only a head start: the engine meets any real fault itself
            log.debug("CUDA warm-up thread: %s", exc)

    thread = threading.Thread(target=warm, name="cuda-warmup", daemon=True)
    thread.start()
    return thread
