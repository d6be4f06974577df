"""What a request asks of the pipeline, with ONE set of defaults for every door.

The CLI, the HTTP API, the OpenAI route, the web UI and batch jobs only turn their inputs into an
`Options` (`Options.from_form` for the string values forms send) and hand it to the pipeline.

Defaults, decided once, as FunASR users expect:
- punctuation: on whenever a punctuation model is available, for recordings of every length;
- VAD: automatic (on for recordings longer than `longform.auto_vad_s`, and whenever speakers are
  asked for); a shorter recording is one clip;
- timestamps: per-character times in the result;
- ITN (numbers, dates, money written as digits): the `pipeline.itn` setting, on unless changed;
- speakers: off (they need a speaker model and cost time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from asr.errors import OptionsError
from asr.pipeline.hotwords import HotwordList, parse_hotwords

MAX_SPEAKERS = 32
Switch = Literal["auto", "on", "off"]
_SWITCH: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


@dataclass(frozen=True)
class Options:
    """Per-request choices. Change with `dataclasses.replace`; never mutate a shared one."""

    hotwords: HotwordList = ()
    """Plain words the recogniser should favour (already parsed and within limits)."""
    vad: bool | None = None
    """True: cut the recording at pauses (VAD); False: no VAD (long audio is still cut at quiet
    points, only where it must be); None: VAD for audio longer than `longform.auto_vad_s`."""
    punctuation: bool = True
    """Punctuate when a punctuation model is available (results say when it was not)."""
    speakers: bool = False
    """Label each sentence with a speaker (implies VAD)."""
    num_speakers: int | None = None
    """With speakers on: the exact number of speakers, or None to estimate it."""
    timestamps: bool = True
    """Per-character times in the result (`tokens`); sentences always carry their times."""
    itn: bool | None = None
    """Write spoken numbers, dates, money ... as digits; None: the `pipeline.itn` setting."""

    def __post_init__(self) -> None:
        if self.num_speakers is not None and not 1 <= self.num_speakers <= MAX_SPEAKERS:
            raise OptionsError(f"num_speakers must lie between 1 and {MAX_SPEAKERS}.")
        if self.num_speakers is not None and not self.speakers:
            object.__setattr__(self, "num_speakers", None)  # a count means nothing without speakers

    @classmethod
    def from_form(
        cls,
        *,
        hotwords: str | list[str] | None = "",
        vad: Switch | str = "auto",
        punc: Switch | str = "auto",
        speakers: bool = False,
        num_speakers: int | None = None,
        timestamps: bool = True,
        itn: Switch | str = "auto",
        max_hotwords: int = 1000,
        max_hotword_chars: int = 32,
    ) -> Options:
        """Options from the values a form, a flag or a UI control sends ('auto' | 'on' | 'off';
        for `itn`, 'auto' is the setting's default)."""
        for name, value in (("vad", vad), ("punc", punc), ("itn", itn)):
            if value not in _SWITCH:
                raise OptionsError(f"{name} must be 'auto', 'on' or 'off', not {str(value)[:20]!r}.")
        words = parse_hotwords(hotwords, max_count=max_hotwords, max_chars=max_hotword_chars)
        return cls(
            hotwords=words,
            vad=_SWITCH[vad],
            punctuation=_SWITCH[punc] is not False,
            speakers=bool(speakers),
            num_speakers=num_speakers if speakers and num_speakers else None,
            timestamps=bool(timestamps),
            itn=_SWITCH[itn],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (batch jobs store it with the job)."""
        out = asdict(self)
        out["hotwords"] = list(self.hotwords)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], hotwords: HotwordList = ()) -> Options:
        """From `to_dict`'s form, or from the option dicts jobs stored before `Options` existed
        ({'vad', 'punc', 'speakers', 'n_speakers'}); `hotwords` fills in when the dict has none."""
        punc = data.get("punctuation", data.get("punc", True))
        return cls(
            hotwords=tuple(data.get("hotwords") or hotwords),
            vad=data.get("vad"),
            punctuation=punc is not False,
            speakers=bool(data.get("speakers", False)),
            num_speakers=data.get("num_speakers", data.get("n_speakers")),
            timestamps=bool(data.get("timestamps", True)),
            itn=data.get("itn"),
        )
