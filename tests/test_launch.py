"""run.sh and webui.py's flags: environment, profile choice, flag -> setting mapping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asr.settings import resolve_config
from asr.web.launch import build_parser, settings_from_args

REPO = Path(__file__).resolve().parents[1]


def test_flags_map_onto_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: 'auto' must pick the CPU profile
    assert Path(resolve_config("auto")).resolve() == (REPO / "configs" / "cpu.yaml").resolve()
    args = build_parser().parse_args(
        ["--config", "auto", "--port", "9001", "--max-batch-size", "7", "--no-gradio-queue",
         "--enable-xformers", "--model", str(tmp_path), "--data-dir", str(tmp_path / "d"), "--no-autolaunch"]
    )  # fmt: skip
    s = settings_from_args(args)
    assert s.engine.device == "cpu"  # from configs/cpu.yaml
    assert (s.server.port, s.engine.max_batch_size, s.server.gradio_queue) == (9001, 7, False)
    assert s.engine.attention == "sdpa" and s.engine.model == str(tmp_path)
    assert s.server.host == "127.0.0.1" and s.server.autolaunch is False and s.server.share is False


def test_run_sh_sets_environment_and_passes_flags(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text(
        "#!/bin/sh\n"
        'echo "ALLOC=$PYTORCH_CUDA_ALLOC_CONF LAZY=$CUDA_MODULE_LOADING CVD=$CUDA_VISIBLE_DEVICES"\n'
        'echo "ARGS=$*"\n'
    )
    fake_python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake_python), "CUDA_VISIBLE_DEVICES": "1"}
    env.pop("ASR_CONFIG", None)
    out = subprocess.run(
        ["bash", str(REPO / "run.sh"), "--port", "8000", "--share"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "ALLOC=expandable_segments:True LAZY=LAZY CVD=1" in out.stdout
    assert "ARGS=webui.py --port 8000 --share --config auto" in out.stdout
    assert "public" in out.stderr  # --share warns
    explicit = subprocess.run(
        ["bash", str(REPO / "run.sh"), "--config", "a10"], env=env, capture_output=True, text=True, check=True
    )
    assert "ARGS=webui.py --config a10\n" in explicit.stdout


def test_run_sh_without_a_model_says_what_to_do_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("ASR_CONFIG", None)
    proc = subprocess.run(
        ["bash", str(REPO / "run.sh"), "--model", str(tmp_path / "no-model"), "--data-dir", str(tmp_path / "d"),
         "--port", "0", "--no-autolaunch"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: Model directory not found: {tmp_path / 'no-model'}"], proc.stderr
    for noise in ("Couldn't find ffmpeg", "torchaudio", "RuntimeWarning"):
        assert noise not in proc.stderr



def test_a_data_dir_that_cannot_be_used_is_one_line_before_the_model_loads(tmp_path: Path) -> None:
    """A file where the data folder should be, or a folder inside one: refused at once with what
    to change (the model is never loaded: the path given for it does not even exist)."""
    (tmp_path / "a-file").write_text("")
    for data_dir, says in ((tmp_path / "a-file", "is a file, not a folder"),
                           (tmp_path / "a-file" / "data", "cannot be made")):
        proc = subprocess.run(
            [sys.executable, str(REPO / "webui.py"), "--model", str(tmp_path / "no-model"), "--data-dir",
             str(data_dir), "--port", "0", "--no-autolaunch", "--no-ui"],
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: The data directory {data_dir} {says} (server.data_dir, --data-dir)"
                          + (": Not a directory." if says == "cannot be made" else ".")], proc.stderr
