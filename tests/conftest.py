from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
ROOT = Path(__file__).resolve().parents[1]
# The default punctuation model is a ModelScope id: resolving it would try to reach the hub.
# Tests send no traffic beyond loopback, so they start with none configured (each test that wants
# punctuation names a local model directory); servers started by tests inherit this.
os.environ.setdefault("ASR_LONGFORM__PUNC_MODEL", "")


def _loopback_only() -> None:
    """Tests talk to this machine only: a name lookup or connection to anywhere else fails at
    once (as on an offline machine) instead of sending traffic. Servers started by the tests get
    the same guard (tests/server/nethook)."""
    import ipaddress
    import socket

    def local(host: object) -> bool:
        if host in (None, "", "localhost") or (isinstance(host, str) and host.startswith("/")):
            return True
        try:
            return ipaddress.ip_address(str(host)).is_loopback
        except ValueError:
            return False

    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not local(host.decode() if isinstance(host, bytes) else host):
            raise socket.gaierror(f"tests reach no host but this machine ({host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):  # type: ignore[no-untyped-def]
        if isinstance(address, tuple) and not local(address[0]):
            raise OSError(f"tests reach no host but this machine ({address[0]!r})")
        return real_connect(self, address)

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    socket.socket.connect = connect  # type: ignore[method-assign]


_loopback_only()
OUTPUT_DIR = ROOT / "test-output"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SeACo-Paraformer directory in funasr's format with seeded random weights."""
    from asr.devtools.testmodel import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("models") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path):
    from asr.engine.core import Engine
    from asr.settings import EngineSettings

    # fp32: the reference path, compared with funasr's own results (int8 is tests/test_int8.py's).
    return Engine.from_settings(EngineSettings(model=str(tiny_model_dir), device="cpu", dtype="fp32", warmup=False))


@pytest.fixture(scope="session")
def funasr_model(tiny_model_dir: Path):
    """funasr's own AutoModel on the same directory: the reference our engine must match."""
    from funasr import AutoModel

    model = AutoModel(
        model=str(tiny_model_dir), disable_update=True, device="cpu", log_level="ERROR", disable_pbar=True
    )
    logging.getLogger().setLevel(logging.WARNING)  # AutoModel calls basicConfig(INFO)
    return model


@pytest.fixture(scope="session")
def clips() -> list[np.ndarray]:
    """Clips of different lengths (so batches have padding), speech-like signal."""
    from audio_fixtures import tone_with_noise

    return [tone_with_noise(s, 16000, seed=i) for i, s in enumerate((3.1, 0.7, 5.2, 1.9, 2.4))]


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT_DIR.mkdir(exist_ok=True)
    return OUTPUT_DIR


_LIVE_FIXTURES = {"live_server", "server"}


# The longest files (seconds on 2 CPU cores), first: tests/run.sh runs files whole on two
# pytest-xdist workers in collection order, and one of these started last would keep one worker
# busy alone at the end. The Ray files sit apart so their clusters rarely start together.
LONGEST_FIRST = (
    "test_trained_model.py",  # 150
    "test_archive_ray.py",  # 88
    "test_decode_processes.py",  # 96
    "server/test_http_workers.py",  # 79
    "server/test_serve_ray.py",  # 81
    "server/test_consistency.py",  # 61
    "test_export_onnx.py",  # 59
    "server/test_decode_processes_live.py",  # 57
    "test_int8.py",  # 47
    "test_bench_e2e.py",  # 45
    "server/test_memory_budget.py",  # 40
    "server/test_live_ws.py",  # 38
    "test_engine_pool.py",  # 35
)


def _file_rank(item: pytest.Item) -> int:
    path = item.path.as_posix()
    return next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith("tests/" + name)), len(LONGEST_FIRST))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers from what a test uses, so a subset runs with one flag (tests/README.md):
    `gpu` (skips without CUDA), `browser` (chromium), `live` (a server process). And the longest
    files first (`LONGEST_FIRST`; a stable sort keeps every file's own order)."""
    items.sort(key=_file_rank)
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & {"page", "browser"}:
            item.add_marker(pytest.mark.browser)
        if names & _LIVE_FIXTURES or "start_server" in getattr(item.module, "__dict__", {}):
            item.add_marker(pytest.mark.live)
        reasons = " ".join(str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif"))
        if "CUDA" in reasons or "cuda" in item.nodeid.lower():
            item.add_marker(pytest.mark.gpu)
