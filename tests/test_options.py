"""Request options: one set of defaults for every door, parsed the same way everywhere."""

from __future__ import annotations

import pytest

from asr.errors import HotwordError, OptionsError
from asr.pipeline.options import Options


def test_defaults_are_decided_once() -> None:
    o = Options()
    # Punctuation whenever a model is available, VAD by length, timestamps on, no speakers.
    assert (o.punctuation, o.vad, o.timestamps, o.speakers, o.hotwords) == (True, None, True, False, ())
    assert Options.from_form() == o


def test_form_values_map_onto_options() -> None:
    o = Options.from_form(hotwords="北京 上海\n北京", vad="on", punc="off", speakers=True, num_speakers=3,
                          timestamps=False)
    assert o == Options(hotwords=("北京", "上海"), vad=True, punctuation=False, speakers=True, num_speakers=3,
                        timestamps=False)
    assert Options.from_form(punc="on").punctuation and Options.from_form(punc="auto").punctuation
    assert Options.from_form(vad="off").vad is False
    # A speaker count means nothing without speakers.
    assert Options.from_form(num_speakers=3).num_speakers is None


@pytest.mark.parametrize("bad", [{"vad": "yes"}, {"punc": "maybe"}, {"speakers": True, "num_speakers": 99}])
def test_bad_values_are_option_errors(bad: dict) -> None:
    with pytest.raises(OptionsError):
        Options.from_form(**bad)


def test_hotword_limits_apply() -> None:
    with pytest.raises(HotwordError, match="limit is 2"):
        Options.from_form(hotwords="一 二 三", max_hotwords=2)


def test_stored_forms_round_trip_including_the_old_ones() -> None:
    o = Options(hotwords=("达摩院",), vad=False, punctuation=False, speakers=True, num_speakers=2)
    assert Options.from_dict(o.to_dict()) == o
    # Jobs stored before Options existed: {'vad', 'punc', 'speakers', 'n_speakers'}, hotwords apart.
    old = Options.from_dict({"vad": None, "punc": False, "speakers": True, "n_speakers": 2}, ("达摩院",))
    assert old == Options(hotwords=("达摩院",), vad=None, punctuation=False, speakers=True, num_speakers=2)
    assert Options.from_dict({"vad": None, "punc": None, "speakers": False, "n_speakers": None}) == Options()
