"""The live load client (tests/live_load.py) at small N on the CPU with the tiny model: every
stream replayed at real time gets every final, none is dropped, and latencies are measured.
The GPU figures (N = 100, 300, 1,000) are in BENCHMARKS.md."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from speech import SENTENCES, recording, require_espeak

from .conftest import REPO, LiveServer

sys.path.insert(0, str(REPO))


def test_small_n_real_time_streams_get_every_final(live_server: LiveServer, tmp_path: Path) -> None:
    from tests.live_load import run

    require_espeak()
    rec = recording(SENTENCES[3:5], [1.0], lead_s=0.5)
    pcm = np.round(np.clip(rec.audio, -1, 1) * 32767).astype("<i2").tobytes()
    report = run(live_server.url.replace("http://", "ws://") + "/api/live", pcm, streams=6, processes=2)
    assert report["error_count"] == 0, report["errors"]
    assert report["ended"] == 6
    assert report["finals_per_stream"] == 2  # one per sentence
    assert report["dropped_finals"] == 0 and report["streams_with_gaps"] == 0
    assert report["partials"] >= 6 and report["partial_p95_ms"] is not None
    # Final latency includes the 300 ms pause the VAD waits for; it is measured, not judged here.
    assert report["final_p50_ms"] is not None and report["final_p50_ms"] > 250
    # The server's side of the same finals (/api/info), read back by the client after its run.
    stages = report["server_stages"]
    assert stages["live"]["final"]["n"] >= 12 and stages["scheduler"]["wait_urgent"]["n"] >= 12
    assert stages["live"]["final"]["p50_ms"] < report["final_p50_ms"]  # the pause is the client's to wait
