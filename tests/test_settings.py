"""Settings and hardware profiles (asr/settings.py): profile choice by GPU, every profile's values arrive."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from asr.settings import profile_for_gpu
from asr.web.launch import build_parser, settings_from_args

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        (None, "cpu"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h100"),
        ("NVIDIA A100-SXM4-40GB", "a100"),
        ("NVIDIA A10G", "a10"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("NVIDIA GeForce RTX 3060", "rtx3060"),
        ("Tesla T4", "rtx4090"),
    ],
)
def test_profile_for_gpu(name: str | None, profile: str) -> None:
    assert profile_for_gpu(name) == profile
    assert (REPO / "configs" / f"{profile}.yaml").is_file()


def test_every_profile_loads_and_its_values_arrive(tmp_path: Path) -> None:
    """Each profile is read, not ignored: every value it sets is the one the settings hold."""
    profiles = sorted((REPO / "configs").glob("*.yaml"))
    assert {p.stem for p in profiles} >= {"cpu", "h100", "a100", "a10", "rtx4090", "rtx3060"}
    for path in profiles:
        settings = settings_from_args(build_parser().parse_args(["--config", path.stem]))
        loaded = settings.model_dump(mode="json")
        for section, values in yaml.safe_load(path.read_text(encoding="utf-8")).items():
            for key, value in values.items():
                assert loaded[section][key] == value, (path.name, section, key)



def test_the_gil_switch_interval_is_set_on_a_gpu_box_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import torch

    from asr import runtime
    from asr.settings import load_settings

    before = sys.getswitchinterval()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep the test process's threads
    monkeypatch.setattr(runtime, "_configured", runtime._configured)  # restored after the test
    try:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        runtime.configure_process(load_settings(engine={"device": "cuda", "gil_switch_ms": 0.1}))
        assert sys.getswitchinterval() == before  # no GPU: Python's default stays
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        runtime.configure_process(load_settings(engine={"device": "cuda", "gil_switch_ms": 0.1}))
        assert sys.getswitchinterval() == pytest.approx(0.0001)
        runtime.configure_process(load_settings(engine={"device": "cpu", "gil_switch_ms": 0.05}))
        assert sys.getswitchinterval() == pytest.approx(0.0001)  # a CPU engine leaves it
    finally:
        sys.setswitchinterval(before)
