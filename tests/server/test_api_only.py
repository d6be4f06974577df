"""--no-ui: the HTTP API alone, for script-only deployments (and GPU boxes without gradio)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from .conftest import service_settings, wav_bytes


def test_api_only_app_serves_the_api_and_no_page(tiny_model_dir: Path, shared_engine, tmp_path: Path) -> None:
    from asr.web import create_app

    settings = service_settings(tiny_model_dir, tmp_path / "data", server={"ui": False})
    with TestClient(create_app(settings, engine=shared_engine)) as client:
        assert client.get("/").status_code == 404
        resp = client.post("/api/transcribe", files={"file": ("a.wav", wav_bytes(1.5))})
        assert resp.status_code == 200 and resp.json()["text"]
        assert client.get("/healthz").status_code == 200


@pytest.mark.slow
def test_api_only_does_not_import_gradio(tiny_model_dir: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from asr.web.launch import settings_from_args, build_parser\n"
        "from asr.web import create_app\n"
        f"s = settings_from_args(build_parser().parse_args(['--no-ui', '--model', {str(tiny_model_dir)!r},"
        f" '--config', 'cpu', '--data-dir', {str(tmp_path)!r}]))\n"
        "assert s.server.ui is False\n"
        "create_app(s)\n"
        "print('gradio' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
