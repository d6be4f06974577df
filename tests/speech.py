"""Real Mandarin speech for tests, synthesised offline with espeak-ng (voice `cmn`).

A "recording" is sentences joined by known pauses over faint noise, so tests know where every
sentence starts and ends in the file's timeline.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

SAMPLE_RATE = 16000

SENTENCES = [
    "今天天气很好，我们一起去公园散步吧",
    "会议现在开始，请大家把手机调成静音",
    "第一个议题是明年的预算安排",
    "财务部门已经准备好了详细的报告",
    "请各位在会后把意见发到我的邮箱",
    "这个项目的进度比计划快了两个星期",
    "我们需要再招聘三名工程师",
    "下一次会议定在星期五下午三点",
    "谢谢大家的参与，今天的会议到此结束",
    "语音识别系统可以自动生成会议纪要",
    "北京的秋天是一年中最美的季节",
    "他说这个问题明天再讨论",
]


def require_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (see tests/apt-packages.txt)")
    return exe


@functools.cache
def say(text: str, speed: int = 160) -> np.ndarray:
    """One sentence as float32 16 kHz mono, with espeak's leading/trailing silence trimmed."""
    exe = require_espeak()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run([exe, "-v", "cmn", "-s", str(speed), "-w", str(wav), text], check=True,
                       capture_output=True)
        audio, sr = sf.read(wav, dtype="float32")
    audio = soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)
    loud = np.nonzero(np.abs(audio) > 0.02)[0]
    audio = audio[loud[0] : loud[-1] + 1]
    return (audio / np.abs(audio).max() * 0.5).astype(np.float32)


@dataclass(frozen=True)
class Recording:
    audio: np.ndarray
    spans: list[tuple[int, int]]  # (start_sample, end_sample) of each sentence
    texts: list[str]


def recording(
    texts: list[str], pauses_s: list[float], lead_s: float = 1.0, noise: float = 0.002, seed: int = 0
) -> Recording:
    """Sentences separated by `pauses_s[i]` seconds of faint noise (a pause after sentence i)."""
    rng = np.random.default_rng(seed)
    parts = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)]
    spans = []
    pos = len(parts[0])
    for i, text in enumerate(texts):
        speech = say(text)
        spans.append((pos, pos + len(speech)))
        parts.append(speech)
        pause = np.zeros(int(pauses_s[i % len(pauses_s)] * SAMPLE_RATE), np.float32)
        parts.append(pause)
        pos += len(speech) + len(pause)
    audio = np.concatenate(parts)
    audio += rng.normal(0, noise, len(audio)).astype(np.float32)
    return Recording(np.clip(audio, -1, 1).astype(np.float32), spans, list(texts))


def say_voice(text: str, pitch: int, speed: int = 160) -> np.ndarray:
    """One sentence with espeak-ng's pitch set (`-p`, 0-99): a lower or higher voice."""
    exe = require_espeak()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run([exe, "-v", "cmn", "-p", str(pitch), "-s", str(speed), "-w", str(wav), text],
                       check=True, capture_output=True)
        audio, sr = sf.read(wav, dtype="float32")
    audio = soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)
    loud = np.nonzero(np.abs(audio) > 0.02)[0]
    audio = audio[loud[0] : loud[-1] + 1]
    return (audio / np.abs(audio).max() * 0.5).astype(np.float32)


def two_voice_recording(texts: list[str], _tmp: Path | None = None, pause_s: float = 1.5,
                        seed: int = 0) -> Recording:
    """Sentences alternating between a low (-p 20) and a high (-p 80) voice, with pauses."""
    rng = np.random.default_rng(seed)
    parts = [np.zeros(SAMPLE_RATE, np.float32)]
    spans = []
    pos = SAMPLE_RATE
    for i, text in enumerate(texts):
        speech = say_voice(text, 20 if i % 2 == 0 else 80)
        spans.append((pos, pos + len(speech)))
        pause = np.zeros(int(pause_s * SAMPLE_RATE), np.float32)
        parts += [speech, pause]
        pos += len(speech) + len(pause)
    audio = np.concatenate(parts)
    audio += rng.normal(0, 0.002, len(audio)).astype(np.float32)
    return Recording(np.clip(audio, -1, 1).astype(np.float32), spans, list(texts))


_REPO = Path(__file__).resolve().parents[1]
_SYNTHESISE = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import evaluate
texts = json.loads(open(sys.argv[2], encoding="utf-8").read())
pairs = evaluate.held_out_audio(texts, offset=int(sys.argv[3]))
np.savez(sys.argv[4], *[w for w, _ in pairs], *[s for _, s in pairs])
"""


def held_out_speech(texts: list[str], offset: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The demonstration model's held-out utterances as training/evaluate.py speaks them: (16 kHz
    wave, character starts in ms) per text. Synthesised by libespeak-ng in a fresh process: in a
    process where other tests have synthesised, the same sentence can come out slightly different,
    and the figures compared with the model's would depend on the test order. Skips without
    libespeak-ng."""
    if str(_REPO / "training") not in sys.path:
        sys.path.insert(0, str(_REPO / "training"))
    import espeak

    try:
        espeak.shared()
    except OSError as exc:
        pytest.skip(f"libespeak-ng is not installed (tests/apt-packages.txt: espeak-ng): {exc}")
    with tempfile.TemporaryDirectory() as tmp:
        listed, out = Path(tmp) / "texts.json", Path(tmp) / "speech.npz"
        listed.write_text(json.dumps(list(texts), ensure_ascii=False), encoding="utf-8")
        subprocess.run([sys.executable, "-c", _SYNTHESISE, str(_REPO / "training"), str(listed), str(offset),
                        str(out)], check=True)
        with np.load(out) as saved:
            n = len(texts)
            return [(saved[f"arr_{i}"], saved[f"arr_{n + i}"]) for i in range(n)]
