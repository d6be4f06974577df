"""Derive the characters that wetext's Chinese ITN tagger can ever put inside a rewrite.

`asr.pipeline.itn` runs the tagger only on runs of these characters that hold a numeral, which is
exact: the tagger is a star over token grammars plus a one-character `char` token, so a character
that no other token can consume always stands alone and no rewrite spans it.

This needs pynini (dev only, ~700 MB: `pip install pynini`); the runtime uses wetext's compiled
FSTs through kaldifst. Re-run after upgrading wetext and paste the output into
`asr/pipeline/itn.py` (`_TOKEN_CHARS`); `tests/test_itn.py` checks the split against whole-text
tagging. Usage: python -m asr.devtools.itn_alphabet [path/to/zh/itn/tagger.fst]
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# Numerals that every non-`char` token must contain (checked below): a run without one is left as
# it is without running the tagger.
NUMERALS = "零〇一二两三四五六七八九十百千万亿兆幺洞拐壹贰叁肆伍陆柒捌玖拾佰仟"


def wetext_tagger_path() -> Path:
    spec = importlib.util.find_spec("wetext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("wetext is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "fsts" / "zh" / "itn" / "tagger.fst"


def token_alphabet(tagger_path: Path) -> tuple[str, list[str]]:
    """(characters inside any non-`char` token, shortest tokens that hold no numeral)."""
    import pynini
    from pynini.lib import byte

    tagger = pynini.Fst.read(str(tagger_path))
    no_brace = pynini.difference(byte.BYTE, pynini.accep("}")).optimize()
    name = pynini.union(*"abcdefghijklmnopqrstuvwxyz_").plus
    one_token = (name + " {" + no_brace.closure() + "}").optimize()
    char_token = (pynini.accep("char {") + no_brace.closure() + "}").optimize()
    # Input strings that the tagger can turn into exactly one token other than `char`.
    inputs = pynini.project(tagger @ pynini.difference(one_token, char_token), "input").rmepsilon().optimize()

    chars: set[str] = set()
    seen: set[tuple[int, bytes]] = set()
    stack = [(inputs.start(), b"")]
    while stack:  # every code point spelled on some path (arcs carry UTF-8 bytes)
        state, pending = stack.pop()
        if (state, pending) in seen:
            continue
        seen.add((state, pending))
        for arc in inputs.arcs(state):
            buf = pending + bytes([arc.ilabel]) if arc.ilabel else pending
            if arc.ilabel:
                try:
                    chars.add(buf.decode("utf-8"))
                    buf = b""
                except UnicodeDecodeError:
                    pass  # a code point continues on the next arc
            stack.append((arc.nextstate, buf))

    without_numeral = pynini.union(*(c for c in chars if c not in NUMERALS)).closure().optimize()
    leftovers = (inputs @ without_numeral).optimize()
    examples = []
    if leftovers.num_states():
        paths = pynini.shortestpath(leftovers, nshortest=10, unique=True).paths()
        examples = list(paths.istrings())
    return "".join(sorted(chars)), examples


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else wetext_tagger_path()
    alphabet, examples = token_alphabet(path)
    print(f"# {len(alphabet)} characters")
    print(repr(alphabet))
    # Only licence plates of letters alone are expected here; their verbalisation is the input.
    for ex in examples:
        print("token without a numeral:", ex)


if __name__ == "__main__":
    main()
