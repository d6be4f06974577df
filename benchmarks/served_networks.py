"""What running the pipelines' networks in the engine's process costs per call (the plumbing of
`longform.punc_in_engine` / `vad_in_engine`): the same Silero block and punctuation windows
through `EngineProcess`'s side pipe and in this process, alternating, one torch thread each side.

    PYTHONPATH=. python benchmarks/served_networks.py MODEL_DIR [PUNC_DIR]

MODEL_DIR: any model directory the engine loads (make-model --size tiny will do: the engine only
hosts the networks here); PUNC_DIR: a CT-Transformer directory (default: the demonstration
model's). Prints milliseconds per call, best of three, for each pair.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def _best_ms(fn, n: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(min(times) * 1000, 2)


def main() -> None:
    import torch

    from asr.engine.process import EngineProcess
    from asr.pipeline.punc import PuncNetwork, Punctuator
    from asr.pipeline.silero_torch import TorchSilero
    from asr.settings import EngineSettings

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from speech import SENTENCES

    torch.set_num_threads(1)
    model = sys.argv[1]
    punc = sys.argv[2] if len(sys.argv) > 2 else "tests/assets/demo-model/punc"
    engine = EngineProcess(EngineSettings(model=model, device="cpu", dtype="fp32", warmup=False, num_threads=1))
    try:
        lanes, lane_frames, warm = 64, 250, 31  # a GPU pipeline's block: 64 lanes of 8 s
        steps, lane = warm + lane_frames, lane_frames * 512
        ext = np.random.default_rng(0).normal(0, 0.1, (lanes - 1) * lane + steps * 512 + 64).astype(np.float32)
        vad = {"here": TorchSilero("cpu"), "child": engine.serve_vad("cpu")}
        network = {"here": PuncNetwork(punc), "child": engine.serve_punctuation(punc, "cpu")}
        tokens = Punctuator(punc, network=network["here"])._tokenizer
        words = [w for s in SENTENCES for w in s] * 80
        windows = [tokens.tokens2ids(words[i : i + 100]) for i in range(0, len(words), 80)]
        for _ in range(2):
            for where in ("here", "child"):
                silero, punctuation = vad[where], network[where]
                block = _best_ms(lambda s=silero: s.lane_probs(ext, lanes, lane, steps))
                many = _best_ms(lambda p=punctuation: p.classes(windows, 8192))
                one = _best_ms(lambda p=punctuation: p.classes([[5, 6, 7]], 8192), 50)
                print(f"{where:5}  Silero, one 512 s block: {block} ms  punctuation, {len(windows)} windows: "
                      f"{many} ms  one 3-word window: {one} ms", flush=True)
    finally:
        engine.close()


if __name__ == "__main__":  # the engine process is spawned: it imports this module
    main()
