import multiprocessing
import os
import sys

from asr import cli


def _leave(code: int) -> None:
    """End the process now, once its child processes are gone. The interpreter's own teardown
    (torch's and CUDA's modules, thousands of objects) took 0.8-0.9 s after a one-file
    `transcribe` had written everything, most of a cold start's slack; nothing of ours is left to
    flush but stdout and stderr. A child still running after 2 s gets the normal exit."""
    for child in multiprocessing.active_children():
        child.join(2.0)
    if multiprocessing.active_children():
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    code = cli.main()
    if cli.finished_transcribing:
        _leave(code)
    sys.exit(code)
