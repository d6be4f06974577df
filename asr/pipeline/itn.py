"""Inverse text normalization: spoken Chinese numbers become digits (一百二十三 -> 123), with times.

The recogniser writes what was said (二零二六年十二月一日, 百分之五); readers expect 2026年12月1日 and 5%.
The grammar is WeTextProcessing's, compiled to FSTs and run by its runtime package `wetext` on
kaldifst (no pynini, no downloads at run time); docs/itn.md says why this library and what it
measured. This module adds three things around it:

- Timestamps. The tagger marks each spoken expression as one token (`cardinal`, `date`, ...), so
  every rewrite is known with the source characters it replaces. `InverseNormalizer.apply` turns
  those into `TimedWord`s: a rewritten span takes the start of its first source character and the
  end of its last; characters that are not rewritten keep their own word and times; marks stay in
  `punc`.
- A written form for Chinese text (GB/T 15835-2011, 出版物上数字用法). wetext writes dates as
  2026/12/01, times as 3:30p.m. and units as symbols (45min, 25°C, ¥123.45). For dates, times,
  money and measures we keep the spoken words and write only the numbers as digits
  (2026年12月1日, 下午3点半, 45分钟, 123.45元); the numbers themselves come from wetext's own
  verbaliser. Percentages, fractions, ratios and plain numbers are written as wetext writes them.
- Restraint where the number is not a number. wetext's whitelist already keeps 一起, 一样, 一些 ...;
  `IDIOMS` adds the words it still rewrites (十分 "very", 几十, number idioms), and approximate
  numbers (三四十岁, 七八个, which wetext writes 30~40岁) stay in characters, as the standard asks.

Speed: the FST costs ~50 µs per character, so it only sees the runs of text that a rewrite can
touch (`_TOKEN_CHARS`, derived from the FST by asr/devtools/itn_alphabet.py) and that hold a
numeral; results per run are cached. A sentence without numerals costs a regex search.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asr.errors import ITNUnavailableError
from asr.pipeline.rewrite import apply_edits, joined_with_offsets
from asr.pipeline.subtitles import TimedWord

# Characters that some non-`char` token of wetext 0.1.8's zh ITN tagger can consume (590 of them,
# from asr/devtools/itn_alphabet.py). Any other character is always a `char` token of its own, so
# no rewrite spans it and the text can be cut there without changing the result.
_TOKEN_CHARS = frozenset(
    ' ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvw'
    'xyz一七万丈三上下不世丘东丝两个临丸丹主之乌乘九也买乱二于云五亚些京人亿仙代令以件伊伍伏会伦伯位体'
    '你俄保俱傍元兆先克兑全八公六兰共兴其典兹冀内冬冰减几刀分列利别到刻前力加动勒勺匈匹十千升午半华单南博'
    '卡卢卮印危厘原叁及双叙叠口古只可台号司合吉名后吨员周和哈哥啖嘴四回园国图土圣圭地场块坡坦埃埔基堂堆堰'
    '塔塞墙墨士壳壶壹夏多夜大天太夫头奈套姆姑委威婆嫩子字季宁安客家宾宿富寨寸对寻封小尔尺尼尾层属山岁岛岭'
    '川巴币布帕帧常幢平年幺库应店度座廷开弗张弧律微心快忽恩恶意慕慢戈成户所手扎把投担拉拐拜拿挑挝挪捆捌换'
    '捷提摄摩撮擒支散文斐斗斛斤斯新方旗无日早旬时明星春晋晚晨普智曲更曼月朗朝期本条来杯板林枝架柒查柬根格'
    '桂桑桶梅棵次欧正段每比毛毫氏民水求汗江沃沙沟沪河泊法泡波泰泽洛洞津洪济浙浩海渝港湘溪滴澳炮点烟焦煲片'
    '牙牛特王玖玻琼瑞瓜瓦瓶甘生疆白百的皆皖皮盆盎盏盒盘直盾石码砣碗碟磅神福秋科秒秘程空窍窠立第笼等管箩箱'
    '篇篮簋米粒粤糟系素索纪纲纳纵线统维罐网罗美群老耳联肆脚腔腾舌般艘色节苏英茄茨荤荷莫莱菲萨蒂蒙藏袋袭裂'
    '西角言让诺课谢豫贝负质贯贰贴贵赣赦赫起越路跳身转辆辈辽达过连迪通道那郎都鄂酋酒里量针钟钧钱钵铢铺锅锱'
    '镑门闽阙队阳阵阿陀陆陕除陵隆零雷青非面韦韩页顶顷顿颗餐饭首马高鲁鲜麦黎黑點鼎（）'
)
# Every non-`char` token holds one of these (checked by the same tool; the only exceptions are
# licence plates of letters, which verbalise to themselves). A run without one is left alone.
_NUMERALS = frozenset("零〇一二两三四五六七八九十百千万亿兆幺洞拐壹贰叁肆伍陆柒捌玖拾佰仟")
_RUNS = re.compile("[" + re.escape("".join(sorted(_TOKEN_CHARS))) + "]+")
_HAS_NUMERAL = re.compile("[" + "".join(sorted(_NUMERALS)) + "]")
# wetext knows 零 but not its variant 〇 (二〇二六年); the tagger reads 〇 as 零, same length.
_TAGGER_VARIANTS = str.maketrans("〇", "零")

# Words whose numerals are not numbers and that wetext would still rewrite. A rewrite is undone
# when it overlaps one of these without containing it whole: 十分重要 stays, 九十分 -> 90分 and
# 十分钟 -> 10分钟 (the expression holds the word and more). Plain lexicon, longest match first.
IDIOMS: tuple[str, ...] = (
    "十分", "几十", "几百", "几千", "几万", "十几", "百分百",
    "一五一十", "八九不离十", "三心二意", "一心一意", "十全十美", "九牛一毛", "一清二楚", "数一数二",
    "独一无二", "说一不二", "接二连三", "三番五次", "三言两语", "七上八下", "乱七八糟", "七嘴八舌",
    "五颜六色", "四面八方", "千方百计", "千千万万", "成千上万", "万无一失", "九死一生", "一举两得",
    "半斤八两", "百发百中", "不三不四", "一干二净", "十有八九", "三五成群", "十字路口", "十字架",
    "三十六计", "三十而立", "四十不惑", "九九八十一",
    # Lunar dates are written in characters (GB/T 15835-2011 §4.2.1); these are festival names.
    "大年三十", "年三十", "正月十五", "八月十五",
)

# Digits for the parts of a date or time that wetext's cardinal verbaliser will not take alone
# (one digit such as the 一 of 一日, or 零五 in 三点零五分).
_DIGIT = {"零": "0", "〇": "0", "洞": "0", "一": "1", "幺": "1", "二": "2", "两": "2", "三": "3", "四": "4",
          "五": "5", "六": "6", "七": "7", "拐": "7", "八": "8", "九": "9"}
_NUM = "零〇一二两三四五六七八九十百千万亿幺洞拐"
# A number inside a date, money amount or measure (三点五公里: 点 is a decimal point) ...
_NUMBER_IN_WORDS = re.compile(f"[{_NUM}]+(?:点[{_NUM}]+)?")
# ... and inside a time of day, where 点 is the hour (九点四十五分).
_NUMBER_IN_TIME = re.compile(f"[{_NUM}]+")
# Token kinds whose words stay and whose numbers become digits; the rest are written as wetext
# writes them (cardinal 123, fraction 1/3, math 3:2, licence plates, phone numbers).
_NUMBERS_IN_PLACE = frozenset({"date", "time", "money", "measure"})

_TOKEN = re.compile(r'(\w+) \{((?: \w+: "(?:[^"\\]|\\.)*")*) \}')
_FIELD = re.compile(r' (\w+): "((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Rewrite:
    """Source characters [start, end) become `text`; [token_start, token_end) is the whole
    expression the tagger recognised (a date is one expression and several rewrites)."""

    start: int
    end: int
    text: str
    token_start: int
    token_end: int


def available() -> bool:
    """Whether the ITN library is installed (without loading it)."""
    return importlib.util.find_spec("wetext") is not None


class InverseNormalizer:
    """Chinese ITN over plain text or timed words. Loaded once (lazily), safe to share by threads.

    The wetext FSTs load on first use (~0.2 s); calls after that keep no per-request state, and
    the run cache is an `lru_cache` (thread-safe).
    """

    def __init__(self, cache_size: int = 65536) -> None:
        self._lock = threading.Lock()
        self._tag: Callable[[str], str] | None = None
        self._verbalizer: Callable[[str], str] | None = None
        # Spoken numbers repeat (一百, 十二点, 百分之五): runs and verbalised tokens are cached.
        self._run_rewrites = functools.lru_cache(maxsize=cache_size)(self._rewrite_run)
        self._verbalize_cached = functools.lru_cache(maxsize=cache_size)(self._verbalize_token)
        self._idioms = re.compile("|".join(sorted(map(re.escape, IDIOMS), key=len, reverse=True)))

    # -- loading ---------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the FSTs now (otherwise the first call does); raises ITNUnavailableError."""
        if self._tag is not None:
            return
        with self._lock:
            if self._tag is not None:
                return
            try:
                import wetext
            except ImportError as e:
                if e.name in (None, "wetext"):
                    raise ITNUnavailableError(
                        "ITN unavailable: the wetext package is not installed (pip install wetext==0.1.8)."
                    ) from e
                # Installed without its dependencies (pip --no-deps, a wheel copied by hand).
                raise ITNUnavailableError(
                    f"ITN unavailable: wetext is installed but its dependency '{e.name}' is missing "
                    "(pip install wetext==0.1.8 installs both)."
                ) from e

            def verbalize(token: str) -> str:
                return wetext.verbalize(wetext.reorder(token, "zh", "itn"), "zh", "itn")

            self._verbalizer = verbalize
            self._tag = functools.partial(wetext.tag, lang="zh", operator="itn")

    # -- text ------------------------------------------------------------------------------------

    def rewrites(self, text: str, keep: Sequence[str] = ()) -> list[Rewrite]:
        """Where `text` changes: non-overlapping rewrites in order, offsets into `text`.

        `keep`: words the caller knows are names (a request's hotwords, such as 七十二变); those
        with a numeral are protected like `IDIOMS`.
        """
        self.load()
        found = self._grammar_rewrites(text)
        if found:
            idioms = [m.span() for m in self._idioms.finditer(text)]
            idioms += [span for word in keep if _HAS_NUMERAL.search(word) for span in _occurrences(word, text)]
            if idioms:
                found = [r for r in found if not any(_breaks(r, span) for span in idioms)]
        return found

    def _grammar_rewrites(self, text: str) -> list[Rewrite]:
        """The grammar's rewrites, tagging only the runs of token characters that hold a numeral."""
        found: list[Rewrite] = []
        if not _HAS_NUMERAL.search(text):
            return found
        for run in _RUNS.finditer(text.translate(_TAGGER_VARIANTS)):
            if _HAS_NUMERAL.search(run.group()):
                base = run.start()
                found.extend(Rewrite(r.start + base, r.end + base, r.text, r.token_start + base,
                                     r.token_end + base) for r in self._run_rewrites(run.group()))
        return found

    def apply_text(self, text: str, keep: Sequence[str] = ()) -> str:
        """The text with spoken numbers written as digits (`keep` as in `rewrites`)."""
        return _splice(text, self.rewrites(text, keep), 0, len(text))

    # -- timed words -----------------------------------------------------------------------------

    def apply(self, words: Sequence[TimedWord], keep: Sequence[str] = ()) -> list[TimedWord]:
        """ITN over timed words; every rewritten span keeps the time of the source it replaced.

        ITN reads the words joined as `join_words` joins them, marks included (三点，五个人 is not
        3.5). A rewrite covering words i..j becomes one word from words[i].start_ms to
        words[j].end_ms carrying words[j].punc; words that no rewrite touches are returned as they
        are. A rewrite never swallows a mark or joins two speakers; such a rewrite is skipped.
        `keep`: words to leave alone, as in `rewrites` (pass the request's hotwords).
        """
        joined = joined_with_offsets(words)
        return apply_edits(words, self.rewrites(joined[0], keep), joined)[0]

    # -- one run of token characters -------------------------------------------------------------

    def _rewrite_run(self, run: str) -> tuple[Rewrite, ...]:
        assert self._tag is not None
        tagged = self._tag(run)
        rewrites: list[Rewrite] = []
        pos = 0
        for m in _TOKEN.finditer(tagged):
            kind = m.group(1)
            fields = [(k, _UNESCAPE.sub(r"\1", v)) for k, v in _FIELD.findall(m.group(2))]
            # The tagger copies the spoken text into the fields in order (preserve_order is a flag).
            source = "".join(v for k, v in fields if k != "preserve_order")
            if run[pos:pos + len(source)] != source:
                return ()  # tags that do not spell the input cannot be placed in time: leave it
            if kind != "char":
                rewrites.extend(self._render(kind, m.group(0), source, pos))
            pos += len(source)
        return tuple(rewrites) if pos == len(run) else ()

    def _render(self, kind: str, token: str, source: str, at: int) -> list[Rewrite]:
        end = at + len(source)
        if kind in _NUMBERS_IN_PLACE and "分之" not in source:  # 百分之五 stays 5% below
            pattern = _NUMBER_IN_TIME if kind == "time" else _NUMBER_IN_WORDS
            parts = []
            for m in pattern.finditer(source):
                digits = self._digits(m.group())
                if digits is None:  # an approximate number (三四十岁) keeps the whole expression
                    return []
                parts.append(Rewrite(at + m.start(), at + m.end(), digits, at, end))
            return parts
        written = self._verbalize_cached(token)
        if not written or written == source or "~" in written:
            return []
        return [Rewrite(at, end, written, at, end)]

    def _verbalize_token(self, token: str) -> str:
        assert self._verbalizer is not None
        return self._verbalizer(token)

    def _digits(self, spoken: str) -> str | None:
        written = self._verbalize_cached(f'cardinal {{ value: "{spoken}" }}')
        if "~" in written:
            return None
        if written:
            return written
        if all(c in _DIGIT for c in spoken):
            return "".join(_DIGIT[c] for c in spoken)
        return None


def _breaks(r: Rewrite, idiom: tuple[int, int]) -> bool:
    """The recognised expression overlaps the idiom without holding it and more."""
    i_start, i_end = idiom
    overlaps = r.token_start < i_end and i_start < r.token_end
    holds = r.token_start <= i_start and i_end <= r.token_end and r.token_end - r.token_start > i_end - i_start
    return overlaps and not holds


def _occurrences(word: str, text: str) -> list[tuple[int, int]]:
    spans, at = [], text.find(word)
    while at >= 0:
        spans.append((at, at + len(word)))
        at = text.find(word, at + 1)
    return spans


def _splice(text: str, rewrites: Sequence[Rewrite], begin: int, end: int) -> str:
    pieces, pos = [], begin
    for r in rewrites:
        pieces.append(text[pos:r.start])
        pieces.append(r.text)
        pos = r.end
    pieces.append(text[pos:end])
    return "".join(pieces)
