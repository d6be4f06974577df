"""Cold start of `python -m asr transcribe` on one short file, as a timeline (#11).

    python benchmarks/device/cold.py T0 VARIANT -- [python -m asr arguments]

VARIANT `default` runs the product as it is; `nowarm` without the CUDA warm-up thread (the A/B
of `asr.runtime.start_cuda_warmup`). T0 is the shell's `date +%s.%N` just before this
interpreter started, so the marks count from the command. The product runs unchanged; marks are
added around its steps by wrapping them: torch imported, the product's modules imported,
funasr's classes registered, the model built and on the device, the first engine call, `main`
returned. Printed as one JSON line.
"""

import json
import sys
import time


def main() -> None:
    t0 = float(sys.argv[1])
    marks: dict[str, float] = {"python_up": round(time.time() - t0, 3)}

    def mark(name: str) -> None:
        marks.setdefault(name, round(time.time() - t0, 3))

    import torch  # noqa: F401

    mark("torch_imported")
    import asr.cli as cli
    import asr.engine.core as core
    import asr.engine.model as model

    mark("product_imported")
    if sys.argv[2] == "nowarm":
        import asr.runtime

        asr.runtime.start_cuda_warmup = lambda engine: None

    def wrap(owner, name, before=None, after=None):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if before:
                mark(before)
            try:
                return original(*args, **kwargs)
            finally:
                if after:
                    mark(after)

        setattr(owner, name, wrapper)

    wrap(model, "funasr_registry", "model_loading", "funasr_classes_registered")
    wrap(core, "load_model", None, "model_on_device")
    wrap(core.Engine, "transcribe", "first_call_start", "first_call_end")
    code = cli.main(sys.argv[sys.argv.index("--") + 1:])
    mark("main_returned")
    print(json.dumps({"variant": sys.argv[2], "code": code, **marks}), flush=True)
    if cli.finished_transcribing:  # as python -m asr leaves
        from asr.__main__ import _leave

        _leave(code)


if __name__ == "__main__":
    main()
