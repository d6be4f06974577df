"""Punctuation (asr/pipeline/punc.py): batched windows give funasr's own marks."""

from __future__ import annotations

import pytest
from speech import SENTENCES

from asr.pipeline.punc import Punctuator, make_punc_model_dir, split_words


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
    theirs = punctuator._model.inference([texts[2]], key=["k"], tokenizer=punctuator._tokenizer,
                                         device="cpu")[0][0]["text"]
    assert ours == theirs

