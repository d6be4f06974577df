"""What users read when something is missing or refused: hints that name the right setting,
Chinese before English for every error code the UI can show."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr.engine import model as model_module
from asr.pipeline.models import StageModels
from asr.settings import LongformSettings
from asr.web.messages import ZH, bilingual


def test_punctuation_hint_names_the_punctuation_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No traffic from a test: the hub counts as unreachable (the offline case users meet).
    monkeypatch.setattr(model_module, "_hub_reachable", lambda timeout_s=3.0: False)
    models = StageModels(LongformSettings(punc_model="iic/punc_not_cached"), tmp_path / "cache")
    assert models.punctuator() is None
    why = models.punctuation_unavailable() or ""
    assert "longform.punc_model" in why and "ASR_LONGFORM__PUNC_MODEL=DIR" in why and "--punc-model" in why
    assert "--model DIR" not in why and "ASR_ENGINE__MODEL" not in why
    assert str(tmp_path) not in why  # results carry this sentence: no paths (#16 item 7)


def test_every_code_the_ui_shows_reads_chinese_first() -> None:
    codes = {
        "invalid_audio", "empty_file", "empty_audio", "corrupt_audio", "bad_header", "non_finite_audio",
        "file_not_found", "unsupported_format", "no_audio_stream", "invalid_hotwords", "limit_exceeded",
        "audio_too_long", "no_files", "queue_full", "out_of_memory", "request_timeout", "job_not_found",
        "model_load_failed", "engine_error", "internal_error", "unauthorized", "url_refused",
    }  # fmt: skip
    assert codes <= set(ZH)
    text = bilingual("corrupt_audio", "The audio data could not be decoded.")
    assert text == "音频数据已损坏，无法解码。 The audio data could not be decoded."
    assert bilingual("no_such_code", "English only.") == "English only."
    assert bilingual("corrupt_audio", text) == text  # never twice
