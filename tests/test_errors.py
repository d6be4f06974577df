"""Errors in one place: every error class has a code, every code an HTTP status chosen on purpose,
and the web layer answers with that status and the JSON error shape."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import asr.engine  # noqa: F401 - imports every module that may define an error class
import asr.pipeline.pipeline  # noqa: F401
import asr.service.core  # noqa: F401
import asr.settings  # noqa: F401
from asr.errors import HTTP_STATUS, ASRError, OptionsError, all_error_classes, http_status
from asr.web.errors import install_error_handlers

ROOT = Path(__file__).resolve().parents[1]


def test_every_error_class_maps_to_a_status_on_purpose() -> None:
    classes = all_error_classes()
    assert len(classes) >= 15
    for cls in classes:
        assert cls.code in HTTP_STATUS, f"{cls.__name__}.code {cls.code!r} has no HTTP status"
        assert 400 <= HTTP_STATUS[cls.code] <= 599, cls
        assert cls.__module__ == "asr.errors", f"{cls.__name__} is defined outside asr/errors.py"


def test_every_code_raised_in_the_source_is_in_the_table() -> None:
    used = set()
    for path in (ROOT / "asr").rglob("*.py"):
        used |= set(re.findall(r'code="([a-z_]+)"', path.read_text(encoding="utf-8")))
    assert used, "no raise site names a code: the pattern is stale"
    assert used <= set(HTTP_STATUS), used - set(HTTP_STATUS)
    with pytest.raises(ValueError, match="no HTTP status"):
        ASRError("x", code="made_up_code")


@pytest.mark.parametrize("cls", [c for c in all_error_classes() if issubclass(c, OptionsError)],
                         ids=lambda c: c.__name__)
def test_option_errors_are_client_errors(cls: type[ASRError]) -> None:
    """VAD, punctuation and speaker option errors are the client's (422), never a 500."""
    assert http_status(cls("bad option")) == 422


def test_the_web_layer_answers_with_the_table() -> None:
    app = FastAPI()
    install_error_handlers(app)
    raised: dict[str, ASRError] = {}

    @app.get("/raise/{name}")
    async def _raise(name: str) -> None:
        raise raised[name]

    client = TestClient(app)
    for cls in all_error_classes():
        exc = cls.__new__(cls)
        ASRError.__init__(exc, f"{cls.__name__} happened.")
        raised[cls.__name__] = exc
        resp = client.get(f"/raise/{cls.__name__}")
        assert resp.status_code == HTTP_STATUS[cls.code], cls
        assert resp.json()["error"]["code"] == cls.code
        assert resp.json()["error"]["message"] == f"{cls.__name__} happened."
        if resp.status_code == 503 and exc.retry_after_s is not None:
            assert int(resp.headers["Retry-After"]) >= 1
