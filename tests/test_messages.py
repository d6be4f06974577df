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


def test_networks_the_batching_process_cannot_load_are_reported_by_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`longform.punc_in_engine` / `vad_in_engine` with a punctuation model that cannot be loaded
    where it would be served: the workers' results say punctuation is unavailable, with the same
    hint as when a worker loads it itself, and a recording that needs the VAD fails typed."""
    from asr.errors import ModelLoadError
    from asr.pipeline.models import served_punctuation, served_vad
    from asr.settings import load_settings

    monkeypatch.setattr(model_module, "_hub_reachable", lambda timeout_s=3.0: False)
    settings = load_settings(None, engine={"model_cache": str(tmp_path / "cache")},
                             longform={"punc_model": "iic/punc_not_cached", "punc_in_engine": True,
                                       "vad_in_engine": True})
    served, why = served_punctuation(settings, engine=None)
    assert served is None and why is not None and "longform.punc_model" in why and str(tmp_path) not in why
    models = StageModels(settings.longform, tmp_path / "cache")
    models.use_served_punctuation(lambda: (served, why))
    models.use_served_vad(lambda: (None, "it could not be loaded in the batching process (a reason)"))
    assert models.punctuator() is None and models.punctuation_unavailable() == why
    with pytest.raises(ModelLoadError, match="Silero VAD is unavailable: it could not be loaded"):
        models.vad()
    assert served_vad(settings.model_copy(update={"longform": settings.longform.model_copy(
        update={"vad_in_engine": False})}), engine=None) == (None, None)  # not asked for: the worker's own


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
