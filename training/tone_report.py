"""Where a trained model's wrong tones are: by the tone confused (espeak-ng's contour digits:
55 level, 35 rising, 214 dipping, 51 falling, 11 neutral), inside a 3-3 sandhi pair or not (espeak
says a dipping tone before another as a rising one), and by the held-out voice's settings.

    .venv/bin/python training/tone_report.py tests/assets/demo-model/asr --limit 300

Reads the same held-out sentences and voices as evaluate.py (CPU, about 10 s for 300).
"""

from __future__ import annotations

import argparse
import difflib
import gzip
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from espeak import shared  # noqa: E402
from evaluate import SEED_BASE, cer, chars, edit_distance, held_out_audio  # noqa: E402
from synth import random_voice  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--testset", type=Path, default=HERE / "carry" / "data" / "corpus.json.gz")
    p.add_argument("--limit", type=int, default=300)
    a = p.parse_args()
    from asr.engine.core import Engine
    from asr.settings import EngineSettings

    with gzip.open(a.testset, "rt", encoding="utf-8") as f:
        texts = json.load(f)["testset"]["cer"][: a.limit]
    engine = Engine.from_settings(EngineSettings(model=str(a.model_dir), device="cpu", dtype="fp32", warmup=False))
    hyps = [r.text for r in engine.transcribe([w for w, _ in held_out_audio(texts)])]
    readings: dict[str, str] = {}

    def read(c: str) -> str:
        if c not in readings:
            readings[c] = shared().phonemes(c)
        return readings[c]

    def tone(c: str) -> str:
        digits = re.findall(r"\d+", read(c))
        return digits[-1] if digits else ""

    kinds: Counter[tuple[str, str]] = Counter()
    per_voice = []
    total = 0
    for i, (ref, hyp) in enumerate(zip(texts, hyps, strict=True)):
        ref, hyp = chars(ref), chars(hyp)
        total += len(ref)
        wrong = 0
        for op, a1, a2, b1, b2 in difflib.SequenceMatcher(None, ref, hyp, autojunk=False).get_opcodes():
            if op != "replace" or a2 - a1 != b2 - b1:
                continue
            for k, (x, y) in enumerate(zip(ref[a1:a2], hyp[b1:b2], strict=True)):
                if read(x) == read(y) or re.sub(r"\d", "", read(x)) != re.sub(r"\d", "", read(y)):
                    continue
                j = a1 + k
                sandhi = tone(x) == "214" and j + 1 < len(ref) and tone(ref[j + 1]) == "214"
                kinds[("3-3 sandhi" if sandhi else "elsewhere", f"{tone(x)} -> {tone(y)}")] += 1
                wrong += 1
        per_voice.append((random_voice(random.Random(SEED_BASE + i)), len(ref), wrong, edit_distance(ref, hyp)))
    wrong_tones = sum(kinds.values())
    print(f"CER {cer(texts, hyps):.2f}%; wrong tones {wrong_tones} of {total} characters "
          f"({100 * wrong_tones / total:.2f}%)")
    sandhi = sum(v for (where, _), v in kinds.items() if where == "3-3 sandhi")
    print(f"in a 3-3 sandhi pair: {sandhi} ({100 * sandhi / max(1, wrong_tones):.1f}% of wrong tones)")
    for (where, pair), v in kinds.most_common(12):
        print(f"  {pair:>10}  {where:<10} {v:4d}  {100 * v / wrong_tones:4.1f}%")
    for name, edges in (("pitch_range", (20, 35, 50, 65, 80, 100)), ("rate", (135, 160, 185, 210, 240)),
                        ("pitch", (25, 40, 55, 80))):
        print(f"by {name}:")
        for lo, hi in zip(edges, edges[1:]):
            rows = [r for r in per_voice if lo <= getattr(r[0], name) < hi]
            n = sum(r[1] for r in rows)
            if n:
                print(f"  {lo}-{hi - 1}: {len(rows)} utterances, wrong tones {100 * sum(r[2] for r in rows) / n:.1f}%, "
                      f"CER {100 * sum(r[3] for r in rows) / n:.1f}%")


if __name__ == "__main__":
    main()
