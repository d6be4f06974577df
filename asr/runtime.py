"""Process-wide settings, applied once where a process starts (the CLI's main, the server's
launch), never as a side effect of building an object."""

from __future__ import annotations

import os
import sys

from asr.settings import EngineSettings, Settings

_configured = False


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
