"""How many sentences per second the ITN stage handles on one core.

    taskset -c 0 python benchmarks/itn_speed.py

Sentences are the case table's rows (tests/itn_cases.py) inside everyday carrier phrases, so each
sentence is distinct; plain sentences hold no numeral at all. Reported per kind:
- cold: the run cache off, every number expression goes through the FSTs (the worst case);
- fresh: a new normalizer, one pass over the distinct sentences (expressions repeat across
  sentences, as they do in speech: 一百, 十二点, 百分之五);
- warm: a second pass with the same normalizer;
- timed words: `apply` on one TimedWord per character (the pipeline's call), fresh and warm.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from itn_cases import POSITIVE, UNCHANGED  # noqa: E402

from asr.pipeline.itn import InverseNormalizer  # noqa: E402
from asr.pipeline.subtitles import TimedWord  # noqa: E402

PREFIXES = ["", "我记得", "他说", "大概是", "你看", "据说", "听说是", "我们知道"]
SUFFIXES = ["", "吧", "。", "呢？", "，对吗？", "啊", "了", "嘛"]
SUBJECTS = ["我们", "他", "大家", "老师", "这个项目", "我觉得你", "公司", "那边的同事"]
VERBS = ["觉得", "希望", "需要", "正在讨论", "还没决定", "已经知道"]
OBJECTS = ["这件事很重要", "明天再说吧", "天气很好", "先把方案定下来", "效果还不错", "可以试试看",
           "要注意安全", "应该没问题"]


def corpora() -> tuple[list[str], list[str]]:
    rows = [spoken for spoken, _ in POSITIVE] + UNCHANGED
    numbers = [p + row + s for row in rows for p, s in zip(PREFIXES, SUFFIXES)]
    numbers += [p + row + s for row in rows for p, s in zip(PREFIXES, reversed(SUFFIXES))]
    plain = ["".join(parts) + "。" for parts in itertools.product(SUBJECTS, VERBS, OBJECTS)]
    return sorted(set(numbers)), plain


def rate(fn: Callable[[object], object], items: Sequence[object], min_s: float = 1.0) -> float:
    """Items per second over whole passes lasting at least `min_s` (one pass if that is longer)."""
    done, start = 0, time.perf_counter()
    while True:
        for item in items:
            fn(item)
        done += len(items)
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return done / elapsed


def one_pass(fn: Callable[[object], object], items: Sequence[object]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description="ITN sentences per second on one core")
    parser.parse_args()
    numbers, plain = corpora()
    words = [[TimedWord(ch, i * 60, i * 60 + 50) for i, ch in enumerate(s)] for s in numbers]
    mean_len = sum(map(len, numbers)) / len(numbers)
    print(f"python {platform.python_version()} on {platform.processor() or platform.machine()}; "
          f"{len(numbers)} distinct sentences with table rows (mean {mean_len:.1f} chars), "
          f"{len(plain)} plain sentences")

    t0 = time.perf_counter()
    first = InverseNormalizer()
    first.apply_text("一百")
    print(f"load: {time.perf_counter() - t0:.2f} s")

    cold = InverseNormalizer(cache_size=0)
    print(f"table sentences, cold : {one_pass(cold.apply_text, numbers):9,.0f} sentences/s")
    fresh = InverseNormalizer()
    print(f"table sentences, fresh: {one_pass(fresh.apply_text, numbers):9,.0f} sentences/s")
    print(f"table sentences, warm : {rate(fresh.apply_text, numbers):9,.0f} sentences/s")
    on_words = InverseNormalizer()
    print(f"timed words, fresh    : {one_pass(on_words.apply, words):9,.0f} sentences/s")
    print(f"timed words, warm     : {rate(on_words.apply, words):9,.0f} sentences/s")
    print(f"plain sentences       : {rate(cold.apply_text, plain):9,.0f} sentences/s")


if __name__ == "__main__":
    main()
