"""Punctuation with FunASR's CT-Transformer (`CTTransformer`), batched over many texts at once.

funasr's own `CTTransformer.inference` takes one text and walks it in 20-word pieces, one forward
pass each. A long recording has hundreds of segments, so here all words of all texts are cut into
overlapping windows and run through the same network (`punc_forward`) as padded batches; the
network masks padding, so a word's prediction does not depend on what else is in the batch.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asr.errors import ModelLoadError, PuncOptionsError

SENTENCE_END = frozenset("。？！?!.")



@dataclass(frozen=True)
class PuncOptions:
    """How texts are windowed and batched for the punctuation model."""

    # Words per window. The released model saw short pieces in training (funasr feeds 20-word
    # pieces plus the unfinished sentence before them); ~100 words gives each word context on
    # both sides without quadratic attention cost.
    window_words: int = 100
    # Words shared by neighbouring windows; each word takes the prediction of the window in
    # which it has context on both sides.
    overlap_words: int = 20
    # Padded words per forward pass (batch size x longest window).
    batch_words: int = 8192

    def __post_init__(self) -> None:
        if self.window_words < 8 or not 0 <= self.overlap_words < self.window_words // 2:
            raise PuncOptionsError(
                "window_words must be at least 8 and overlap_words less than half of it."
            )
        if self.batch_words < self.window_words:
            raise PuncOptionsError("batch_words must be at least window_words.")


def split_words(text: str) -> list[str]:
    """Words as the punctuation model sees them: each CJK character alone, ASCII runs whole."""
    words: list[str] = []
    for chunk in text.split():
        run = ""
        for ch in chunk:
            if ch.isascii():
                run += ch
            else:
                if run:
                    words.append(run)
                    run = ""
                words.append(ch)
        if run:
            words.append(run)
    return words


class PuncNetwork:
    """The CT-Transformer's network on one device: windows of word ids in, mark classes out.

    Apart from `Punctuator` (the words' side: tokens, windows, marks) so that the network can run
    in another process (`longform.punc_in_engine`: the engine's, one GPU context and one copy of
    the weights for every worker) while each worker keeps the words' Python. Thread-safe: the
    network is only read."""

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        from asr.engine.model import read_model_config

        model_dir = Path(model_dir)
        conf = read_model_config(model_dir, "CTTransformer", "CT-Transformer punctuation")
        for name in ("model.pt", "tokens.json"):
            if not (model_dir / name).is_file():
                raise ModelLoadError(f"The punctuation model at {model_dir} has no {name}.")
        try:
            import torch

            from asr.engine.model import funasr_registry, skip_init

            tables = funasr_registry(conf)
            tokens = json.loads((model_dir / "tokens.json").read_text(encoding="utf-8"))
            model_cls = tables.model_classes.get("CTTransformer")
            if model_cls is None:
                raise ModelLoadError("funasr could not register CTTransformer.")
            with skip_init():  # every parameter comes from model.pt (loaded strictly below)
                self._model = model_cls(
                    encoder=conf["encoder"], encoder_conf=conf["encoder_conf"],
                    vocab_size=len(tokens), **conf.get("model_conf", {}),
                )
            state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
            self._model.load_state_dict(state, strict=True)
            self._model.eval().to(device)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"The punctuation model at {model_dir} could not be loaded: {exc}"
            ) from exc
        self._torch = torch
        self.device = device
        # On a GPU, a stream of its own: in the engine's process (`punc_in_engine`) a pass does
        # not queue behind the recogniser's work on the default stream.
        self._stream = torch.cuda.Stream(device) if torch.device(device).type == "cuda" else None

    def classes(self, ids: Sequence[Sequence[int]], batch_words: int) -> list[np.ndarray]:
        """Each window's mark classes (int8, one per word), windows batched by length into
        forward passes of at most `batch_words` padded words."""
        torch = self._torch
        order = sorted(range(len(ids)), key=lambda k: len(ids[k]), reverse=True)
        results: list[np.ndarray] = [np.zeros(0, np.int8)] * len(ids)
        pos = 0
        while pos < len(order):
            longest = max(1, len(ids[order[pos]]))
            size = max(1, batch_words // longest)
            batch = order[pos : pos + size]
            pos += size
            lengths = [len(ids[k]) for k in batch]
            if max(lengths) == 0:
                continue
            text = torch.zeros((len(batch), max(lengths)), dtype=torch.long)
            for row, k in enumerate(batch):
                text[row, : lengths[row]] = torch.tensor(ids[k], dtype=torch.long)
            with torch.inference_mode(), torch.cuda.stream(self._stream):  # no stream: a no-op
                y, _ = self._model.punc_forward(
                    text.to(self.device), torch.tensor(lengths, dtype=torch.int32).to(self.device)
                )
                classes = y.argmax(dim=-1).to(torch.int8).cpu().numpy()
            for row, k in enumerate(batch):
                results[k] = classes[row, : lengths[row]]
        return results


class Punctuator:
    """A CT-Transformer punctuation model loaded from a funasr-format model directory: the
    words' side here, the network in `network` (by default loaded here, on `device`).

    Thread-safe: the network is only read, and inference holds no per-request state.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", network: Any = None) -> None:
        from asr.engine.model import read_model_config

        model_dir = Path(model_dir)
        conf = read_model_config(model_dir, "CTTransformer", "CT-Transformer punctuation")
        if not (model_dir / "tokens.json").is_file():
            raise ModelLoadError(f"The punctuation model at {model_dir} has no tokens.json.")
        self.network = network if network is not None else PuncNetwork(model_dir, device)
        """Anything with `PuncNetwork.classes`."""
        try:
            from asr.engine.model import funasr_registry

            tok_conf = dict(conf.get("tokenizer_conf") or {})
            tok_conf["token_list"] = str(model_dir / "tokens.json")
            self._tokenizer = funasr_registry(conf).tokenizer_classes.get(
                conf.get("tokenizer", "CharTokenizer")
            )(**tok_conf)
            punc_list = list(conf["model_conf"]["punc_list"])
        except Exception as exc:
            raise ModelLoadError(
                f"The punctuation model at {model_dir} could not be loaded: {exc}"
            ) from exc
        # Class 0 is <unk> and "_" means no mark; both become "".
        self.marks = ["" if p in ("<unk>", "_") else p for p in punc_list]
        self._shared = SharedPasses(self._predict_now)
        self.passes = 0
        """Batches run so far (concurrent callers share them)."""
        self.model_dir = model_dir

    def predict(
        self, word_lists: Sequence[Sequence[str]], opts: PuncOptions | None = None
    ) -> list[list[str]]:
        """The mark to put after each word ("" for none), for many word lists in one pass.

        Callers on other threads at the same time (a folder's files finishing together) share
        one pass: the first runs every request waiting, the others wait for their part. A
        forward pass per file cost more than the file's recognition on a GPU box."""
        return self._shared.call(word_lists, opts or PuncOptions())

    def _predict_now(self, word_lists: Sequence[Sequence[str]], opts: PuncOptions) -> list[list[str]]:
        self.passes += 1
        windows: list[tuple[int, int, int]] = []  # (list index, start, end)
        for i, words in enumerate(word_lists):
            n = len(words)
            step = opts.window_words - opts.overlap_words
            start = 0
            while start < n:
                end = min(n, start + opts.window_words)
                windows.append((i, start, end))
                if end == n:
                    break
                start += step
        ids = [
            self._tokenizer.tokens2ids([w.lower() for w in word_lists[i][s:e]])
            for i, s, e in windows
        ]
        preds = self.network.classes(ids, opts.batch_words)
        out = [[""] * len(w) for w in word_lists]
        half = opts.overlap_words // 2
        for (i, s, e), pred in zip(windows, preds):
            # A later window overwrites all but its first `half` words: those keep the earlier
            # window's prediction, made with context on their right.
            first = s + half if s > 0 else s
            for pos in range(first, e):
                out[i][pos] = self.marks[int(pred[pos - s])]
        return out

    def punctuate(self, texts: Sequence[str], opts: PuncOptions | None = None) -> list[str]:
        """Texts with punctuation added (CJK joined without spaces, ASCII words spaced)."""
        word_lists = [split_words(t) for t in texts]
        marks = self.predict(word_lists, opts)
        out = []
        for words, ms in zip(word_lists, marks):
            text = ""
            prev_ascii = False
            for word, mark in zip(words, ms):
                if word.isascii() and prev_ascii:
                    text += " "
                text += word
                prev_ascii = word.isascii() and not mark
                if mark:
                    text += _ascii_mark(mark) if word.isascii() else mark
            out.append(close_sentence(text))
        return out


class SharedPasses:
    """Calls made at the same time share one pass of `run(items, key)` (a list in, one answer
    per item out): the first caller runs every request waiting, its own and those that arrive
    while a pass runs, with the same `key` in one pass; the others wait for their part."""

    def __init__(self, run: Callable[[list[Any], Any], Sequence[Any]]) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._waiting: list[_Request] = []
        self._running = False

    def call(self, items: Sequence[Any], key: Any) -> list[Any]:
        request = _Request(items, key)
        with self._lock:
            self._waiting.append(request)
            lead = not self._running
            self._running = True
        if not lead:
            request.done.wait()
        else:
            while True:
                with self._lock:
                    batch, self._waiting = self._waiting, []
                    if not batch:
                        self._running = False
                        break
                self._serve(batch)
        if request.error is not None:
            raise request.error
        assert request.answers is not None
        return request.answers

    def _serve(self, batch: list[_Request]) -> None:
        # Requests with the same key share the pass; others (rare) run on their own.
        groups: dict[Any, list[_Request]] = {}
        for r in batch:
            groups.setdefault(r.key, []).append(r)
        for key, requests in groups.items():
            try:
                answers = self._run([x for r in requests for x in r.items], key)
            except BaseException as exc:  # every waiter gets the failure, none hangs
                for r in requests:
                    r.error = exc
            else:
                at = 0
                for r in requests:
                    r.answers = list(answers[at : at + len(r.items)])
                    at += len(r.items)
            finally:
                for r in requests:
                    r.done.set()


class SharedNetwork:
    """A punctuation network whose concurrent `classes` calls share forward passes
    (`SharedPasses`): in a batching process that serves several workers, the files they finish
    at the same time are punctuated together, as one worker's are by its `Punctuator`."""

    def __init__(self, network: Any) -> None:
        self.network = network
        self._shared = SharedPasses(self._pass)
        self.passes = 0
        """Passes run so far (concurrent calls share them)."""

    def classes(self, ids: Sequence[Sequence[int]], batch_words: int) -> list[np.ndarray]:
        return self._shared.call(ids, batch_words)

    def _pass(self, ids: list[Sequence[int]], batch_words: int) -> list[np.ndarray]:
        self.passes += 1
        return self.network.classes(ids, batch_words)


@dataclass
class _Request:
    items: Sequence[Any]
    key: Any
    done: threading.Event = field(default_factory=threading.Event)
    answers: list[Any] | None = None
    error: BaseException | None = None


def _ascii_mark(mark: str) -> str:
    return {"，": ",", "。": ".", "？": "?"}.get(mark, mark)


def close_sentence(text: str) -> str:
    """End a text with a sentence mark, as funasr does at the end of its input."""
    if not text or text[-1] in SENTENCE_END:
        return text
    if text[-1] in "，、,":
        text = text[:-1]
    return text + ("." if text[-1:].isascii() else "。")


def make_punc_model_dir(
    path: str | Path, vocab: Iterable[str], seed: int = 0, dim: int = 32, full: bool = False
) -> Path:
    """Write a CT-Transformer dir in funasr's format with seeded random weights: small (for
    tests), or with `full` the released model's layers (for benchmarks; `dim` is then ignored).

    Random weights would predict class 0 (`<unk>`), which funasr splices into the text as
    "<unk>"; its output bias is pushed far down so predictions fall on real marks.
    """
    from importlib import resources

    import torch
    import yaml

    from asr.engine.model import funasr_registry

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    conf: dict[str, Any] = yaml.safe_load(
        resources.files("asr.engine.model_configs").joinpath("ct_punc.config.yaml").read_text("utf-8")
    )
    if not full:
        conf["model_conf"].update(embed_unit=dim, att_unit=dim)
        conf["encoder_conf"].update(
            input_size=dim, output_size=dim, attention_heads=2, linear_units=2 * dim, num_blocks=2
        )
    words = [w for w in dict.fromkeys(vocab) if w not in ("<blank>", "<s>", "</s>", "<unk>")]
    tokens = ["<blank>", "<s>", "</s>", *words, "<unk>"]
    tables = funasr_registry(conf)
    torch.manual_seed(seed)
    model = tables.model_classes.get("CTTransformer")(
        encoder=conf["encoder"], encoder_conf=conf["encoder_conf"], vocab_size=len(tokens),
        **conf["model_conf"],
    )
    with torch.no_grad():
        model.decoder.bias[0] = -100.0
    torch.save(model.state_dict(), out / "model.pt")
    (out / "config.yaml").write_text(yaml.safe_dump(conf, allow_unicode=True), encoding="utf-8")
    (out / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
    return out
