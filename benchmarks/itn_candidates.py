"""Score one ITN library on the case table (tests/itn_cases.py): correctness, load time, speed on
one core, and whether 8 threads at once give the sequential results. The numbers in docs/itn.md.

Each library wants its own virtualenv (pynini alone is ~700 MB), so run this file with that
environment's python, from the repository root:

    python benchmarks/itn_candidates.py ours         # asr.pipeline.itn (wetext + our layer)
    python benchmarks/itn_candidates.py ours-cold    # the same with its run cache off
    python benchmarks/itn_candidates.py wetext       # pip install wetext==0.1.8
    python benchmarks/itn_candidates.py wetextprocessing  # pip install wetextprocessing==1.2.0
    python benchmarks/itn_candidates.py cn2an        # pip install cn2an==0.5.24
    python benchmarks/itn_candidates.py chinese2digits    # pip install chinese2digits==6.0.2

Pin it to one core for the speed figure: `taskset -c 0 python ...`.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from itn_cases import KNOWN_LIMITATIONS, POSITIVE, UNCHANGED  # noqa: E402


def load(name: str) -> Callable[[str], str]:
    if name in ("ours", "ours-cold"):
        from asr.pipeline.itn import InverseNormalizer

        normalizer = InverseNormalizer(cache_size=0 if name == "ours-cold" else 65536)
        normalizer.load()
        return normalizer.apply_text
    if name == "wetext":
        from wetext import Normalizer

        return Normalizer(lang="zh", operator="itn").normalize
    if name == "wetextprocessing":
        from itn.chinese.inverse_normalizer import InverseNormalizer as WTP

        return WTP().normalize  # the FSTs shipped in the wheel (default options)
    if name == "cn2an":
        import cn2an

        warnings.simplefilter("ignore")  # it warns on every expression it cannot parse
        return lambda text: cn2an.transform(text, "cn2an")
    if name == "chinese2digits":
        import chinese2digits

        return lambda text: chinese2digits.takeNumberFromString(text)["replacedText"]
    raise SystemExit(f"unknown library {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per speed measurement")
    parser.add_argument("--show", action="store_true", help="print every wrong row")
    args = parser.parse_args()

    t0 = time.perf_counter()
    itn = load(args.library)
    itn("一百二十三")
    load_s = time.perf_counter() - t0

    def score(rows: list[tuple[str, str]]) -> int:
        right = 0
        for spoken, written in rows:
            try:
                got = itn(spoken)
            except Exception as e:  # a library that raises on a row gets it wrong
                got = f"<{type(e).__name__}>"
            right += got == written
            if got != written and args.show:
                print(f"  {spoken} -> {got}   (want {written})")
        return right

    positives = score(POSITIVE)
    negatives = score([(s, s) for s in UNCHANGED])
    limits = score(KNOWN_LIMITATIONS)

    texts = [spoken for spoken, _ in POSITIVE] + UNCHANGED
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        for text in texts:
            itn(text)
        done += len(texts)
    rate = done / (time.perf_counter() - start)

    sequential = [itn(t) for t in texts * 4]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(itn, texts * 4))

    print(f"{args.library}: rewrites {positives}/{len(POSITIVE)}, unchanged {negatives}/{len(UNCHANGED)}, "
          f"known-limitation rows {limits}/{len(KNOWN_LIMITATIONS)}; load {load_s:.2f} s; "
          f"{rate:,.0f} sentences/s (table texts, repeated); "
          f"8 threads == sequential: {threaded == sequential}")


if __name__ == "__main__":
    main()
