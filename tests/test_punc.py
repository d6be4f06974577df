"""Punctuation (asr/pipeline/punc.py): batched windows give funasr's own marks."""

from __future__ import annotations

import pytest
from speech import SENTENCES

from asr.pipeline.punc import PuncNetwork, Punctuator, SharedNetwork, make_punc_model_dir, split_words


@pytest.fixture(scope="module")
def punc_dir(tmp_path_factory):
    vocab = sorted({c for s in SENTENCES for c in s if not c.isascii()})
    return make_punc_model_dir(tmp_path_factory.mktemp("punc"), vocab, seed=0)


@pytest.fixture(scope="module")
def punctuator(punc_dir):
    return Punctuator(punc_dir)


def test_punctuation_batched_equals_single_and_funasr(punctuator):
    texts = [s.replace("，", "") for s in SENTENCES] + ["".join(SENTENCES).replace("，", "") * 3]
    words = [split_words(t) for t in texts]
    batched = punctuator.predict(words)
    assert batched == [punctuator.predict([w])[0] for w in words]
    assert all(m in {"", "，", "。", "？", "、"} for ms in batched for m in ms)
    assert "<unk>" not in "".join(punctuator.punctuate(texts))
    # Same marks as funasr's own CTTransformer.inference on a text of one 20-word piece.
    ours = punctuator.punctuate([texts[2]])[0]
    theirs = punctuator.network._model.inference([texts[2]], key=["k"], tokenizer=punctuator._tokenizer,
                                         device="cpu")[0][0]["text"]
    assert ours == theirs



def test_concurrent_callers_share_passes_and_get_their_own_marks(punc_dir):
    import threading

    punctuator = Punctuator(punc_dir)
    texts = [[w for s in SENTENCES[i : i + 1 + i % 4] for w in split_words(s)] for i in range(len(SENTENCES))]
    alone = [punctuator.predict([t]) for t in texts]
    passes = punctuator.passes
    assert passes == len(texts)
    got: dict[int, list[list[str]]] = {}
    start = threading.Barrier(len(texts))

    def call(i: int) -> None:
        start.wait()
        got[i] = punctuator.predict([texts[i]])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(texts))] == alone  # each its own marks, as when alone
    assert punctuator.passes - passes < len(texts)  # and fewer forward passes than callers


def test_a_failing_pass_raises_to_its_caller_and_the_next_call_works(punc_dir):
    punctuator = Punctuator(punc_dir)
    with pytest.raises(AttributeError):
        punctuator.predict([[object()]])  # type: ignore[list-item]  # not a word: the tokenizer fails
    assert not punctuator._shared._running  # the failed leader handed the lead back
    assert len(punctuator.predict([["今", "天", "好"]])[0]) == 3


def test_a_shared_network_merges_concurrent_calls_into_fewer_passes(punc_dir, punctuator):
    """What a batching process serves its workers (`longform.punc_in_engine`): windows of word
    ids from several callers at once, each answered with its own classes."""
    import threading

    network = SharedNetwork(PuncNetwork(punc_dir))
    tokens = punctuator._tokenizer
    calls = [[tokens.tokens2ids(split_words(s)[: 5 + i]) for s in SENTENCES[i:]] for i in range(8)]
    alone = [[r.tolist() for r in network.classes(ids, 64)] for ids in calls]
    assert network.passes == len(calls)
    got: dict[int, list] = {}
    start = threading.Barrier(len(calls))

    def call(i: int) -> None:
        start.wait()
        got[i] = [r.tolist() for r in network.classes(calls[i], 64)]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(calls))] == alone
    assert network.passes - len(calls) < len(calls)
