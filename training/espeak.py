"""Mandarin speech from libespeak-ng through ctypes, with the time every character starts.

Why the library and not the `espeak-ng` command: the library reports a WORD event per Chinese
character with the sample it starts at, so every utterance comes with true character boundaries,
and one process synthesises thousands of sentences without spawning a program per sentence.

Voice: `cmn-latn-pinyin`. Debian 12's espeak-ng 1.51 `cmn` voice reads its own pinyin dictionary
entries' tone digits as English numbers ("北" -> "bei three"); `cmn-latn-pinyin` is the same
Mandarin voice with Latin read as pinyin, and speaks the tones. `-x` shows the difference:
`espeak-ng -v cmn -x 北京` vs `espeak-ng -v cmn-latn-pinyin -x 北京`.

The same library file must be used for training and for tests: audio and boundaries depend on
espeak-ng's version. `ASR_ESPEAK_LIB` names the library file and `ASR_ESPEAK_DATA` the folder
that holds `espeak-ng-data` (the GPU run points both at Debian's packages unpacked privately);
by default the system's libespeak-ng.so.1 and its compiled-in data path are used.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass

import numpy as np

ESPEAK_RATE = 22050  # libespeak-ng's output rate for every voice
VOICE = "cmn-latn-pinyin"
# Voice variants (formant sets) that still sound like speech: espeak-ng-data/voices/!v.
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt3", "Andy", "Annie", "adam", "benjamin", "linda", "david")

_EVENT_WORD = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7
_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_POS_CHARACTER = 1


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    # espeak_EVENT from speak_lib.h
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


@dataclass(frozen=True)
class Voice:
    """espeak-ng prosody settings for one utterance."""

    rate: int = 175  # words per minute (espeak's scale; 80-450)
    pitch: int = 50  # 0-99
    pitch_range: int = 50  # 0-99: how much the pitch moves
    variant: str = ""  # one of VARIANTS ("" = the voice's own formants)

    @property
    def name(self) -> str:
        return f"{VOICE}+{self.variant}" if self.variant else VOICE


@dataclass(frozen=True)
class Utterance:
    """One synthesised utterance at ESPEAK_RATE."""

    samples: np.ndarray  # int16
    chars: str  # the CJK characters of the text, in order: the transcript
    starts: np.ndarray  # int64 sample where each character of `chars` starts
    speech_end: int  # sample after the last character's sound (before trailing silence)


class SynthesisError(RuntimeError):
    pass


class Espeak:
    """One libespeak-ng instance. The library keeps global state: use one per process."""

    _lock = threading.Lock()

    def __init__(self, lib_path: str | None = None, data_dir: str | None = None) -> None:
        lib_path = lib_path or os.environ.get("ASR_ESPEAK_LIB") or "libespeak-ng.so.1"
        data_dir = data_dir or os.environ.get("ASR_ESPEAK_DATA") or None
        self.lib = ctypes.CDLL(lib_path)
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        rate = self.lib.espeak_Initialize(
            _OUTPUT_SYNCHRONOUS, 0, data_dir.encode() if data_dir else None, 0
        )
        if rate != ESPEAK_RATE:
            raise SynthesisError(f"espeak-ng failed to start (returned {rate}); data path {data_dir!r}")
        self._samples: list[np.ndarray] = []
        self._words: list[tuple[int, int]] = []  # (text position, sample)
        self._callback = _CALLBACK(self._on_audio)  # kept alive: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _on_audio(self, wav, n, events) -> int:  # type: ignore[no-untyped-def]
        if n > 0:
            self._samples.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != 0:
            # Clause boundaries (quotes, colons) also raise WORD events, at text position 0.
            if events[i].type == _EVENT_WORD and events[i].text_position > 0:
                self._words.append((events[i].text_position, events[i].sample))
            i += 1
        return 0

    def _set_voice(self, voice: Voice) -> None:
        if voice.name != self._voice:
            if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise SynthesisError(f"espeak-ng has no voice {voice.name!r}")
            self._voice = voice.name
        for param, value in ((_PARAM_RATE, voice.rate), (_PARAM_PITCH, voice.pitch),
                             (_PARAM_RANGE, voice.pitch_range), (_PARAM_VOLUME, 100)):
            self.lib.espeak_SetParameter(param, int(value), 0)

    def synth(self, text: str, voice: Voice = Voice()) -> Utterance:
        """Speak `text` (CJK characters, optionally with Chinese punctuation for pauses).

        Raises SynthesisError when the character events do not match the text one to one (the
        boundaries would be wrong), so callers can skip such a sentence.
        """
        with self._lock:
            self._samples, self._words = [], []
            self._set_voice(voice)
            data = text.encode("utf-8")
            err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if err != 0:
                raise SynthesisError(f"espeak_Synth failed with {err}")
            samples = np.concatenate(self._samples) if self._samples else np.zeros(0, np.int16)
            words = list(self._words)
        positions = [i + 1 for i, ch in enumerate(text) if is_cjk(ch)]  # espeak counts from 1
        chars = "".join(ch for ch in text if is_cjk(ch))
        # Pause marks (，、) raise WORD events too, out of order at the clause end: keep the
        # characters' own events, which come in text order.
        wanted = set(positions)
        words = [(p, s) for p, s in words if p in wanted]
        got = [p for p, _ in words]
        if got != positions:
            raise SynthesisError(f"character events {got[:8]}... do not match the text {text[:20]!r}")
        starts = np.array([s for _, s in words], dtype=np.int64)
        if len(starts) and np.any(np.diff(starts) <= 0):
            raise SynthesisError(f"character starts are not increasing in {text[:20]!r}")
        return Utterance(samples.astype(np.int16), chars, starts, speech_end(samples, starts))

    def phonemes(self, text: str) -> str:
        """espeak-ng's phoneme string for `text` (what `espeak-ng -x` prints), for homophones."""
        with self._lock:
            self._set_voice(Voice())
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            ptr = ctypes.c_void_p(ctypes.addressof(buf))
            parts = []
            while ptr.value:
                out = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, 0)
                if out:
                    parts.append(out.decode("utf-8", "replace"))
            return " ".join(parts).strip()


def speech_end(samples: np.ndarray, starts: np.ndarray, floor: int = 300) -> int:
    """First sample after the last character's sound: trailing samples quieter than `floor`
    (int16 units, about -40 dBFS) are espeak's closing pause."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > floor)
    end = int(loud[-1]) + 1 if len(loud) else len(samples)
    return max(end, int(starts[-1]) + 1 if len(starts) else 0)


_shared: Espeak | None = None


def shared() -> Espeak:
    """The process's espeak instance (created on first use)."""
    global _shared
    if _shared is None:
        _shared = Espeak()
    return _shared
