"""What a request asks of the pipeline, with ONE set of defaults for every door.

The CLI, the HTTP API, the OpenAI route, the web UI and batch jobs only turn their inputs into an
`Options` (`Options.from_form` for the string values forms send) and hand it to the pipeline.

Defaults, decided once, as FunASR users expect:
- punctuation: on whenever a punctuation model is available, for recordings of every length;
- VAD: automatic (on for recordings longer than `longform.auto_vad_s`, and whenever speakers are
  asked for); a shorter recording is one clip;
- timestamps: per-character times in the result;
- ITN (numbers, dates, money written as digits): the `pipeline.itn` setting, on unless changed;
- speakers: off (they need a speaker model and cost time);
- hotword sets: none; a request names sets (`hotword_sets`) and the service resolves them into
  `hotwords`, `corrections` and the versions used before the pipeline runs (docs/hotwords.md);
- hotword_diff: off (it recognises every clip twice);
- channels: "mix" (all channels averaged to one, as always); "split" recognises each channel
  separately and labels its sentences with the channel's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from asr.errors import OptionsError
from asr.pipeline.corrections import CorrectionList
from asr.pipeline.hotwords import HotwordList, parse_hotwords
from asr.pipeline.result import HotwordSetUse

MAX_SPEAKERS = 32
Switch = Literal["auto", "on", "off"]
Channels = Literal["mix", "split"]
_SWITCH: dict[str, bool | None] = {"auto": None, "on": True, "off": False}
_TRUE = {"true", "on", "1", "yes"}
_FALSE = {"false", "off", "0", "no", ""}
_LIST_SEPARATORS = re.compile(r"[\s,，;；、]+")
_NAME_SEPARATORS = re.compile(r"[\n,，;；、]+")  # channel names may hold spaces (Agent 1)
# A hotword set's name: letters (Chinese too), digits, '-', '_' and '.', not starting with a mark.
SET_NAME = re.compile(r"^\w[\w.\-]{0,63}$")
# A channel name ends up in subtitles ("坐席: ...", WebVTT's <v 坐席>): no markup, no line breaks.
MAX_CHANNEL_NAME = 32
_CHANNEL_NAME_BAD = re.compile(r"[<>&\x00-\x1f\x7f]")
MAX_CHANNEL_NAMES = 16


def default_channel_name(index: int) -> str:
    """The name of channel `index` (0-based) when the request gives none: CH1, CH2, ..."""
    return f"CH{index + 1}"


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
    hotword_sets: tuple[HotwordSetUse | str, ...] = ()
    """Named hotword sets: names as a request gives them, `HotwordSetUse`s (name and version)
    once the service has resolved them into `hotwords` and `corrections`. The pipeline only
    takes resolved ones."""
    corrections: CorrectionList = ()
    """(wrong, right) pairs applied to the text after ITN (from the named sets)."""
    hotword_diff: bool = False
    """Also recognise every clip without the hotwords (in the same batch) and report where the
    text differs (`Result.hotword_diff`)."""
    channels: Channels = "mix"
    """'mix': channels averaged to one; 'split': each channel recognised on its own and labelled."""
    channel_names: tuple[str, ...] = ()
    """With channels='split': names for channels 1, 2, ... (missing ones are CH1, CH2, ...)."""

    def __post_init__(self) -> None:
        if self.num_speakers is not None and not 1 <= self.num_speakers <= MAX_SPEAKERS:
            raise OptionsError(f"num_speakers must lie between 1 and {MAX_SPEAKERS}.")
        if self.num_speakers is not None and not self.speakers:
            object.__setattr__(self, "num_speakers", None)  # a count means nothing without speakers
        if self.channels not in ("mix", "split"):
            raise OptionsError(f"channels must be 'mix' or 'split', not {str(self.channels)[:20]!r}.")
        if self.channels == "split" and self.speakers:
            raise OptionsError(
                "speakers and channels='split' do not go together: with split channels each channel is "
                "one speaker, labelled with its name (channel_names)."
            )
        if self.channel_names and self.channels != "split":
            raise OptionsError("channel_names only apply with channels='split'.")
        if len(self.channel_names) > MAX_CHANNEL_NAMES:
            raise OptionsError(f"At most {MAX_CHANNEL_NAMES} channel names.")
        for name in self.channel_names:
            if not name or len(name) > MAX_CHANNEL_NAME or _CHANNEL_NAME_BAD.search(name):
                raise OptionsError(
                    f"A channel name has 1 to {MAX_CHANNEL_NAME} characters and no <, >, & or control "
                    f"characters: {name[:40]!r}."
                )
        if len(set(self.channel_names)) != len(self.channel_names):
            raise OptionsError("Channel names must differ from each other.")
        for item in self.hotword_sets:
            name = item if isinstance(item, str) else item.name
            if not SET_NAME.match(name):
                raise OptionsError(
                    f"{name[:40]!r} is not a hotword set name (letters, digits, '-', '_', '.'; at most 64)."
                )

    @property
    def set_names(self) -> tuple[str, ...]:
        """The names of the hotword sets asked for."""
        return tuple(s if isinstance(s, str) else s.name for s in self.hotword_sets)

    @property
    def sets_resolved(self) -> bool:
        """Whether every named set has been resolved (its words are in `hotwords`)."""
        return all(isinstance(s, HotwordSetUse) for s in self.hotword_sets)

    def channel_name(self, index: int) -> str:
        """The name of channel `index` (0-based)."""
        return self.channel_names[index] if index < len(self.channel_names) else default_channel_name(index)

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
        hotword_sets: str | list[str] | None = "",
        hotword_diff: bool | str = False,
        channels: Channels | str = "mix",
        channel_names: str | list[str] | None = "",
        max_hotwords: int = 1000,
        max_hotword_chars: int = 32,
    ) -> Options:
        """Options from the values a form, a flag or a UI control sends ('auto' | 'on' | 'off';
        for `itn`, 'auto' is the setting's default). Set names and channel names are separated
        by commas, spaces or new lines (a list is taken as it is)."""
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
            hotword_sets=tuple(dict.fromkeys(_names(hotword_sets))),
            hotword_diff=_flag("hotword_diff", hotword_diff),
            channels=channels,  # type: ignore[arg-type] - checked in __post_init__
            channel_names=_names(channel_names, _NAME_SEPARATORS),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (batch jobs store it with the job: resolved sets, their words and
        corrections included, so a job never changes when a set does)."""
        out = asdict(self)
        out["hotwords"] = list(self.hotwords)
        out["hotword_sets"] = [s if isinstance(s, str) else {"name": s.name, "version": s.version}
                               for s in self.hotword_sets]
        out["corrections"] = [list(pair) for pair in self.corrections]
        out["channel_names"] = list(self.channel_names)
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
            hotword_sets=tuple(s if isinstance(s, str) else HotwordSetUse(s["name"], int(s["version"]))
                               for s in data.get("hotword_sets") or ()),
            corrections=tuple((str(w), str(r)) for w, r in data.get("corrections") or ()),
            hotword_diff=bool(data.get("hotword_diff", False)),
            channels=data.get("channels", "mix"),
            channel_names=tuple(data.get("channel_names") or ()),
        )


def _names(value: str | list[str] | tuple[str, ...] | None, separators: re.Pattern[str] = _LIST_SEPARATORS,
           ) -> tuple[str, ...]:
    """Names from a form field (split at `separators`) or a list (each item one name)."""
    if value is None:
        return ()
    items = separators.split(value) if isinstance(value, str) else [str(v) for v in value]
    return tuple(n for n in (item.strip() for item in items) if n)


def _flag(name: str, value: bool | str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise OptionsError(f"{name} must be true or false, not {str(value)[:20]!r}.")
