"""The README's Python example runs as written: on a CPU, from a directory other than the
repository (where a user's script lives)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from audio_fixtures import all_formats

REPO = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs_on_cpu_from_another_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "README's Python section has no example"
    formats = all_formats(2.0)
    (tmp_path / "a.mp3").write_bytes(formats["stereo44.mp3"])
    (tmp_path / "b.wav").write_bytes(formats["pcm16_16k.wav"])
    env = {
        **os.environ,
        # Stands for `pip install -e .`, which the README asks for before importing from elsewhere.
        "PYTHONPATH": str(REPO),
        # Offline: the README's own advice for a local model directory.
        "ASR_ENGINE__MODEL": str(tiny_model_dir),
        "CUDA_VISIBLE_DEVICES": "",
    }
    env.pop("ASR_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-c", code[1]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Per file: the text, then its sentences' (start_ms, end_ms).
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and all(
        re.fullmatch(r"\S+ \[\(\d+, \d+\)(, \(\d+, \d+\))*\]", line) for line in lines
    ), proc.stdout
