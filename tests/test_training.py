"""The training recipe's parts (training/): speech synthesis with character times, the vectorised
CIF and sampler against funasr's own, and the SeACo loss against funasr's."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))


@pytest.fixture(scope="module")
def espeak_engine():
    import espeak

    try:
        return espeak.shared()
    except OSError as exc:
        pytest.skip(f"libespeak-ng is not installed (tests/apt-packages.txt: espeak-ng): {exc}")


def test_every_character_gets_an_increasing_start(espeak_engine) -> None:
    from espeak import Voice

    text = "同胞们、朋友们，他说：“好的”！一九九八年"
    utt = espeak_engine.synth(text, Voice(rate=200, variant="f2"))
    assert utt.chars == "同胞们朋友们他说好的一九九八年"
    assert len(utt.starts) == len(utt.chars)
    assert np.all(np.diff(utt.starts) > 0)
    assert 0 <= utt.starts[0] < 0.1 * 22050 and utt.starts[-1] < utt.speech_end <= len(utt.samples)
    # Faster speech is shorter, with the same characters.
    fast = espeak_engine.synth(text, Voice(rate=300))
    slow = espeak_engine.synth(text, Voice(rate=130))
    assert len(fast.samples) < 0.7 * len(slow.samples)


def test_voice_reads_tones_not_english_digits(espeak_engine) -> None:
    # Debian's espeak-ng 1.51 `cmn` voice says "bei three"; the pinyin voice must not.
    assert "(en)" not in espeak_engine.phonemes("北京的秋天")
    assert espeak_engine.phonemes("时间") == espeak_engine.phonemes("湜堅")  # a hotword trap
    assert espeak_engine.phonemes("时间") != espeak_engine.phonemes("事件")


def test_resampler_matches_soxr() -> None:
    import soxr
    from synth import resample

    t = np.arange(22050) / 22050
    x = (np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    ours = resample(torch.from_numpy(x)[None])[0].numpy()
    ref = soxr.resample(x, 22050, 16000)
    assert len(ours) == len(ref) == 16000
    assert np.abs(ours[200:-200] - ref[200:-200]).max() < 2e-3


def test_vectorised_cif_equals_funasr_with_gradients() -> None:
    from funasr.models.paraformer.cif_predictor import cif as funasr_cif

    from asr.engine.cif import cif

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 40, 8, generator=g)
    alphas = torch.rand(3, 40, generator=g) * 0.6
    # As in training: weights scaled to the target lengths (plus a hair, so rounding cannot drop
    # the last token in one implementation and not the other).
    alphas = alphas * (torch.tensor([9.0, 5.0, 12.0]) / alphas.sum(1))[:, None] * (1 + 1e-5)
    outs = []
    for fn in (funasr_cif, cif):
        h, a = hidden.clone().requires_grad_(), alphas.clone().requires_grad_()
        emb, fires = fn(h, a, 1.0)
        (emb * torch.arange(emb.numel(), dtype=emb.dtype).reshape(emb.shape).sin()).sum().backward()
        outs.append((emb.detach(), fires.detach(), h.grad, a.grad))
    (e1, f1, gh1, ga1), (e2, f2, gh2, ga2) = outs
    n = min(e1.shape[1], e2.shape[1])
    assert e1.shape == e2.shape and torch.allclose(e1[:, :n], e2[:, :n], atol=1e-5)
    assert torch.allclose(f1.float(), f2.float(), atol=1e-5)
    assert torch.allclose(gh1, gh2, atol=1e-5) and torch.allclose(ga1, ga2, atol=1e-4)


@pytest.fixture(scope="module")
def dry_model():
    import train_asr

    tokens = ["<blank>", "<s>", "</s>", *[chr(0x4E00 + i) for i in range(60)], *[f"x{i}" for i in range(30)], "<unk>"]
    conf = train_asr.model_config(train_asr.SIZES["dry"], len(tokens))
    torch.manual_seed(0)
    model = train_asr.build_model(conf, len(tokens))
    train_asr.use_vectorised_cif()
    return model, tokens


def test_training_continues_from_an_exported_model(tmp_path) -> None:
    """`--init`: a second round starts from the exported directory's weights (fp16 on disk) and
    CMVN; the frame classifier, which the export drops, starts fresh; another vocabulary or size
    is refused."""
    import train_asr

    tokens = ["<blank>", "<s>", "</s>", *[chr(0x4E00 + i) for i in range(60)], "<unk>"]
    conf = train_asr.model_config(train_asr.SIZES["dry"], len(tokens), ctc_weight=train_asr.CTC_WEIGHT)
    torch.manual_seed(1)
    first = train_asr.build_model(conf, len(tokens))
    cmvn = np.stack([np.linspace(-3, 3, 560), np.linspace(0.5, 2, 560)]).astype(np.float32)
    out = train_asr.export(first, conf, tokens, {}, cmvn, tmp_path / "round1", {"steps": 1})

    torch.manual_seed(2)
    second = train_asr.build_model(conf, len(tokens))
    fresh_ctc = second.ctc.ctc_lo.weight.detach().clone()
    loaded = train_asr.load_init(second, tokens, out)
    np.testing.assert_allclose(loaded, cmvn, atol=1e-6)
    theirs, ours = first.state_dict(), second.state_dict()
    for key, value in theirs.items():
        if key.startswith("ctc."):
            continue
        assert torch.equal(ours[key], value.half().float() if value.is_floating_point() else value), key
    assert torch.equal(second.ctc.ctc_lo.weight, fresh_ctc)

    with pytest.raises(ValueError, match="vocabulary"):
        train_asr.load_init(train_asr.build_model(conf, len(tokens)), [*tokens[:-1], "x"], out)
    bigger = train_asr.model_config(train_asr.SIZES["demo"], len(tokens), ctc_weight=train_asr.CTC_WEIGHT)
    with pytest.raises(ValueError, match="architecture"):
        train_asr.load_init(train_asr.build_model(bigger, len(tokens)), tokens, out)


def _batch(vocab: int, b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([7, 5, 9, 3][:b])
    ys = torch.full((b, int(lens.max())), -1)
    for i, n in enumerate(lens):
        ys[i, :n] = torch.randint(3, vocab - 31, (int(n),), generator=g)
    feats = torch.randn(b, 60, 560, generator=g)
    feat_lens = torch.tensor([60, 45, 58, 30][:b])
    return feats, feat_lens, ys, lens


def _shared_hotwords(model, tokens, ys, lens):
    """One hotword list for the whole batch, drawn from its transcripts (no respelled spans)."""
    import train_asr

    corpus = train_asr.Corpus(tokens, [ys[i, : lens[i]].numpy() for i in range(len(lens))], [],
                              [None] * len(lens), [])
    return train_asr.sample_hotwords(corpus, list(range(len(lens))), int(model.NO_BIAS), int(model.sos),
                                     random.Random(0), torch.device("cpu"), group=len(lens), own_list_p=0.0)


def _one_span_batch(model, tokens, seed: int, row: int, span: slice, label: int):
    """A batch whose only frame label is `label` on `row`'s frames `span` (-1, no label, elsewhere),
    its shared hotwords, and `train_asr.losses`'s frame targets (zero starts and upsampled ones)."""
    feats, feat_lens, ys, lens = _batch(len(tokens), seed=seed)
    hot = _shared_hotwords(model, tokens, ys, lens)
    zeros = torch.zeros(len(lens), feats.shape[1])
    labels = torch.full((len(lens), feats.shape[1]), -1)
    labels[row, span] = label
    return feats, feat_lens, ys, lens, hot, (zeros, zeros.repeat(1, 3), labels)


def test_glancing_sampler_glances_at_the_wrong_share(dry_model) -> None:
    import train_asr

    model, tokens = dry_model
    model.eval()
    feats, feat_lens, ys, lens = _batch(len(tokens))
    enc, enc_lens = model.encode(feats, feat_lens)
    acoustic = torch.randn(ys.shape[0], ys.shape[1], enc.shape[-1])
    y0 = ys.clamp(min=0)
    assert torch.equal(train_asr.glancing_sampler(model, enc, enc_lens, y0, lens, acoustic, 0.0),
                       acoustic * (torch.arange(ys.shape[1])[None] < lens[:, None])[..., None])
    mixed = train_asr.glancing_sampler(model, enc, enc_lens, y0, lens, acoustic, 1.0)
    with torch.no_grad():
        pred = model.decoder(enc, enc_lens, acoustic, lens)[0].argmax(-1)
    target = model.decoder.embed(y0)
    for i, n in enumerate(lens.tolist()):
        wrong = int((pred[i, :n] != y0[i, :n]).sum())
        took_target = sum(torch.allclose(mixed[i, k], target[i, k]) for k in range(n))
        assert took_target == wrong


def test_losses_equal_funasr_paraformer_and_seaco(dry_model) -> None:
    """With sampling off and dropout off, our objective's terms are funasr's."""
    import train_asr
    from funasr.models.transformer.utils.add_sos_eos import add_sos_eos

    model, tokens = dry_model
    model.eval()
    model.sampling_ratio = 0.0
    feats, feat_lens, ys, lens = _batch(len(tokens), seed=1)
    corpus = train_asr.Corpus(tokens, [ys[i, : lens[i]].numpy() for i in range(len(lens))], [],
                              [(0, 3), None, (2, 5), None], [])
    hot = train_asr.sample_hotwords(corpus, list(range(len(lens))), int(model.NO_BIAS), int(model.sos),
                                    random.Random(0), torch.device("cpu"), group=len(lens), own_list_p=0.0)
    ours = train_asr.losses(model, feats, feat_lens, ys, ys, lens, hot, None)
    enc, enc_lens = model.encode(feats, feat_lens)
    loss_att, _, _, _, loss_pre = model._calc_att_loss(enc, enc_lens, ys, lens)
    loss_pre2 = model._calc_pre2_loss(enc, enc_lens, ys, lens)
    assert torch.allclose(ours["att"], loss_att, atol=1e-5)
    assert torch.allclose(ours["pre"], loss_pre, atol=1e-5)
    assert torch.allclose(ours["pre2"], loss_pre2 * 0.5, atol=1e-5)
    # One shared list (group = batch): funasr's own SeACo loss on the same list and labels.
    n_words = int(hot.counts[0])
    _, ys_pad = add_sos_eos(ys, model.sos, model.eos, model.ignore_id)
    labels = hot.labels
    ref = model._calc_seaco_loss(enc, enc_lens, ys_pad, lens + 1, hot.pad[hot.index[0, :n_words]],
                                 hot.lengths[hot.index[0, :n_words]], labels)
    assert torch.allclose(ours["seaco"], ref, atol=1e-5)
    # The respelled span is listed and copied; every other label is NO_BIAS or a copy of the
    # spoken token (a listed word that also occurs there).
    assert (labels[0, :3] == ys[0, :3]).all()
    valid = ys >= 0
    assert ((labels == model.NO_BIAS) | (labels == ys) | ~valid).all()
    assert (labels[valid] == model.NO_BIAS).any()


def test_alignment_targets_count_characters_at_their_boundaries() -> None:
    import train_asr

    bounds = torch.tensor([[0.2, 0.5, 0.9, 1.0, 1e4]])
    n = torch.tensor([4])
    times = torch.tensor([[0.0, 0.2, 0.35, 0.5, 0.9, 0.95, 1.0, 2.0]])
    curve = train_asr.count_curve(bounds, n, times)
    assert torch.allclose(curve, torch.tensor([[0.0, 0.0, 0.5, 1.0, 2.0, 2.5, 3.0, 3.0]]))


def test_frame_characters_follow_the_known_boundaries() -> None:
    """Each frame is labelled with the character sounding at its time, silence outside speech."""
    import train_asr

    # Characters start at 0.2, 0.5, 0.9 s; speech ends at 1.0 s; the clip at 1.2 s.
    bounds = torch.tensor([[0.2, 0.5, 0.9, 1.0, 1.2, 1e4]])
    times = torch.tensor([[0.0, 0.19, 0.2, 0.49, 0.5, 0.95, 0.99, 1.0, 1.1, 2.0]])
    labels = train_asr.frame_characters(bounds, torch.tensor([3]), times)
    assert labels.tolist() == [[-1, -1, 0, 0, 1, 2, 2, -1, -1, -1]]


def test_frame_loss_teaches_each_frame_its_character(dry_model) -> None:
    """The frame classifier (the CTC branch's output layer) is taught, per valid frame, the
    decoder target of the character sounding there, the blank id in silence."""
    import train_asr

    _, tokens = dry_model
    conf = train_asr.model_config(train_asr.SIZES["dry"], len(tokens), ctc_weight=train_asr.CTC_WEIGHT)
    torch.manual_seed(0)
    model = train_asr.build_model(conf, len(tokens))
    model.eval()
    # utterance 0's second character sounds in frames 10-19
    feats, feat_lens, ys, lens, hot, targets = _one_span_batch(model, tokens, 2, 0, slice(10, 20), 1)
    frames = feats.shape[1]
    out = train_asr.losses(model, feats, feat_lens, ys, ys, lens, hot, targets)
    enc, enc_lens = model.encode(feats, feat_lens)
    logits = model.ctc.ctc_lo(enc).log_softmax(-1)
    expected = torch.full((len(lens), frames), model.blank_id)
    expected[0, 10:20] = ys[0, 1]
    valid = torch.arange(frames)[None] < enc_lens[:, None]
    nll = -logits.gather(-1, expected[..., None])[..., 0]
    assert torch.allclose(out["frame"], nll[valid].mean(), atol=1e-5)


def test_tone_frames_teach_each_frame_its_reading(dry_model) -> None:
    """The tonal-syllable classifier (--tone-frames): homophones share a class, tones do not;
    each valid frame is taught the class of the character sounding there, silence elsewhere."""
    import train_asr

    model, tokens = dry_model
    model.eval()
    readings = {"他": "tha55", "她": "tha55", "塔": "tha214"}
    fake = train_asr.tone_classes(["a", "他", "她", "塔", "<unk>"], lambda c: readings[c])
    assert fake[0].tolist() == [1, 2, 2, 3, 1] and fake[1] == 4
    classes, n = train_asr.tone_classes(tokens, lambda c: "x" + c)  # every character its own reading
    tones = train_asr.ToneFrames(classes, n, model.encoder.output_size())
    # utterance 1's third character sounds in frames 5-11
    feats, feat_lens, ys, lens, hot, targets = _one_span_batch(model, tokens, 3, 1, slice(5, 12), 2)
    frames = feats.shape[1]
    out = train_asr.losses(model, feats, feat_lens, ys, ys, lens, hot, targets, tones)
    enc, enc_lens = model.encode(feats, feat_lens)
    logp = tones.out(enc).log_softmax(-1)
    expected = torch.zeros(len(lens), frames, dtype=torch.long)
    expected[1, 5:12] = classes[ys[1, 2]]
    valid = torch.arange(frames)[None] < enc_lens[:, None]
    nll = -logp.gather(-1, expected[..., None])[..., 0]
    assert torch.allclose(out["tone_frame"], nll[valid].mean(), atol=1e-5)
    assert int(expected[1, 5]) >= 2  # a Chinese character's reading, not silence or "no reading"
    out["tone_frame"].backward()  # the encoder learns from it, not only the classifier
    assert tones.out.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    model.zero_grad(set_to_none=True)  # the model is the module's: leave it as it was


def test_error_kinds_class_each_substitution_by_reading() -> None:
    import evaluate

    readings = {"是": "s.i.51", "事": "s.i.51", "时": "s.i.35", "我": "wo214", "你": "n'i214", "好": "xAu214"}
    kinds = evaluate.error_kinds(["是我你好", "时好"], ["事我好", "是好你"], reading=readings.__getitem__)
    # 是->事 homophone, 你 deleted; 时->是 tone, 你 inserted; six reference characters.
    assert kinds == {"tone": round(100 / 6, 2), "homophone": round(100 / 6, 2), "other": 0.0,
                     "deleted": round(100 / 6, 2), "inserted": round(100 / 6, 2)}
    assert evaluate.error_kinds(["我"], ["你"], reading=readings.__getitem__)["other"] == 100.0


def test_start_hits_pair_substituted_characters_only_when_asked() -> None:
    """A homophone written in place of the spoken character is a timing hit when its start lands,
    but only with `substitutions=True`; a deleted character and a start 100 ms off are misses."""
    import evaluate

    true = np.array([0, 200, 400, 600, 800])  # 会议室讨论, ms
    # 室 written 是 at its place (within 30 ms); 讨 100 ms late; 论 deleted.
    tokens, stamps = list("会议是讨"), [[10, 150], [190, 350], [430, 560], [700, 1000]]
    assert evaluate.start_hits("会议室讨论", tokens, stamps, true) == (2, 5)
    assert evaluate.start_hits("会议室讨论", tokens, stamps, true, substitutions=True) == (3, 5)
    # A replaced run of another length pairs nothing: which character would stand for which?
    tokens, stamps = list("会议是是是论"), [[10, 150], [190, 350], [400, 500], [500, 560], [600, 700], [800, 900]]
    assert evaluate.start_hits("会议室讨论", tokens, stamps, true, substitutions=True) == (3, 5)


def test_weighted_seaco_loss_is_funasrs_at_weight_one_and_leans_on_listed_positions() -> None:
    import train_seaco
    from funasr.losses.label_smoothing_loss import LabelSmoothingLoss

    torch.manual_seed(0)
    no_bias, vocab = 9, 10
    logits = torch.randn(3, 5, vocab)
    labels = torch.tensor([[no_bias, 2, 3, no_bias, -1], [no_bias] * 5, [4, no_bias, -1, -1, -1]])
    funasr = LabelSmoothingLoss(vocab, padding_idx=-1, smoothing=0.1, normalize_length=True)
    same = train_seaco.weighted_loss(logits, labels, no_bias, 1.0)
    assert torch.allclose(same, funasr(logits, labels), atol=1e-5)
    # Weight 10: the mean moves towards the listed positions' own loss.
    copy = (labels >= 0) & (labels != no_bias)
    listed = train_seaco.weighted_loss(logits.masked_fill(~copy[..., None], 0), labels.masked_fill(~copy, -1),
                                       no_bias, 1.0)
    heavy = train_seaco.weighted_loss(logits, labels, no_bias, 10.0)
    assert abs(heavy - listed) < abs(same - listed)


def test_hotword_lists_include_the_few_word_lists_the_product_gets() -> None:
    """Issue #12: group lists (about 30 words, one of them nearly always spoken) were the only
    lists the bias head saw; given one word, as the product often is, it copied almost nothing."""
    import train_asr

    rng = random.Random(0)
    ids = [np.array([rng.randrange(3, 50) for _ in range(10)]) for _ in range(256)]
    corpus = train_asr.Corpus([str(i) for i in range(60)], ids, [], [(2, 4)] * 256, [])
    hot = train_asr.sample_hotwords(corpus, list(range(256)), 59, 1, random.Random(0), torch.device("cpu"))
    counts = hot.counts.tolist()
    assert min(counts) <= 2 and max(counts) > 10  # few-word lists and group lists, "<s>" included
    # One-word lists holding just the utterance's own span, copied where it is spoken.
    own = [b for b, n in enumerate(counts)
           if n == 2 and hot.pad[hot.index[b, 0], : hot.lengths[hot.index[b, 0]]].tolist() == ids[b][2:4].tolist()]
    assert own
    for b in own:
        assert hot.labels[b, 2:4].tolist() == ids[b][2:4].tolist()


def test_respeller_draws_new_homophone_spellings_of_the_span(espeak_engine) -> None:
    """Issue #12: with each utterance's spelling fixed, stage 2 learnt utterance -> spelling (96%
    of respelled positions copied on its own utterances, 13% on unseen ones); drawn anew, the
    spelling can only come from the list. The sound must not change: the frozen outputs are the
    recogniser's on the utterance as spoken."""
    import json

    import train_seaco

    tokens = json.loads((ROOT / "tests/assets/demo-model/asr/tokens.json").read_text("utf-8"))
    index = {t: i for i, t in enumerate(tokens)}
    every = [np.arange(len(tokens))] * 50  # every character counts as well known
    respeller = train_seaco.Respeller(tokens, every, avoid={"颖骗"}, fresh_p=1.0)
    dec = np.array([index[c] for c in "影片中的医生是个典型的例子"])
    ids = dec.copy()
    ids[0:2] = [index["郢"], index["骗"]]  # the corpus's spelling
    rng = random.Random(0)
    spellings = set()
    for _ in range(20):
        out, span = respeller(dec, ids, (0, 2), rng)
        assert span == (0, 2) and out[2:].tolist() == dec[2:].tolist()
        word = "".join(tokens[i] for i in out[0:2])
        assert word != "颖骗"  # a held-out trap word is never drawn
        assert espeak_engine.phonemes(word) == espeak_engine.phonemes("影片")
        spellings.add(word)
    assert len(spellings) > 3
    # An utterance without a respelled span gets a fresh one, written differently, sounding the same.
    out, span = respeller(dec, dec, None, rng)
    assert span is not None and out.tolist() != dec.tolist()
    s, e = span
    assert espeak_engine.phonemes("".join(tokens[i] for i in out[s:e])) == \
        espeak_engine.phonemes("".join(tokens[i] for i in dec[s:e]))


def test_respeller_random_spans_move_anywhere_in_the_utterance(espeak_engine) -> None:
    """Issue #12: the corpus's span sits at one place in its utterance, which the head can
    memorise; with `random_span_p` a draw respells a span of 2-4 tokens at any place instead,
    the rest of the utterance (the corpus's span included) in its common spelling."""
    import json

    import train_seaco

    tokens = json.loads((ROOT / "tests/assets/demo-model/asr/tokens.json").read_text("utf-8"))
    index = {t: i for i, t in enumerate(tokens)}
    every = [np.arange(len(tokens))] * 50
    respeller = train_seaco.Respeller(tokens, every, avoid={"颖骗"}, fresh_p=0.0, random_span_p=1.0)
    dec = np.array([index[c] for c in "影片中的医生是个典型的例子"])
    ids = dec.copy()
    ids[0:2] = [index["郢"], index["骗"]]
    rng = random.Random(0)
    places = set()
    for _ in range(30):
        out, span = respeller(dec, ids, (0, 2), rng)
        s, e = span
        assert 2 <= e - s <= 4
        assert out[:s].tolist() == dec[:s].tolist() and out[e:].tolist() == dec[e:].tolist()
        assert out[s:e].tolist() != dec[s:e].tolist()
        assert espeak_engine.phonemes("".join(tokens[i] for i in out[s:e])) == \
            espeak_engine.phonemes("".join(tokens[i] for i in dec[s:e]))
        places.add(s)
    assert len(places) > 4
    # At 0 (the default) the corpus's span is the one respelled, as before.
    respeller.random_span_p = 0.0
    assert respeller(dec, ids, (0, 2), rng)[1] == (0, 2)


def test_install_takes_stage_two_weights_and_hotword_figures(tmp_path) -> None:
    """`install_model.py RESULTS --seaco SEACO`: the bias path's weights replace stage 1's, its
    hotword figures replace stage 1's (which has no working bias path), the card says how both
    stages ran, and results from another model's stage 2 are refused."""
    import json
    import shutil
    import tarfile

    import install_model

    shipped = ROOT / "tests" / "assets" / "demo-model"
    results, seaco = tmp_path / "out1", tmp_path / "out2"
    results.mkdir()
    seaco.mkdir()
    shutil.copy(shipped / "punc" / "model.pt", results / "punc_model.pt")
    with tarfile.open(results / "models_rest.tar.gz", "w:gz") as tar:
        for name in ("asr", "punc"):
            tar.add(shipped / name, arcname=name, filter=lambda t: None if t.name.endswith("model.pt") else t)
    logs = json.loads((shipped / "training-log.json").read_text("utf-8"))
    (results / "logs.json").write_text(json.dumps({"asr": logs["asr"], "punc": logs["punc"]}), "utf-8")
    stage1 = {"cer_utterances": 300, "cer_fp32": 21.05, "start_within_80ms": 0.6832, "hotword_recall_with": 0.0,
              "hotword_recall_without": 0.0, "hotword_false_insertion_rate": 0.0, "cer_fp32_with_hotwords": 21.58}
    (results / "metrics.json").write_text(json.dumps(stage1), "utf-8")
    stage2 = {**stage1, "hotword_recall_with": 0.775, "hotword_false_insertion_rate": 0.0067,
              "cer_fp32_with_hotwords": 25.53}
    (seaco / "metrics_new.json").write_text(json.dumps(stage2), "utf-8")
    shutil.copy(shipped / "asr" / "model.pt", seaco / "model.pt")
    (results / "asr_model.pt").write_bytes(b"stage one")  # must not be installed
    (seaco / "train_log.json").write_text(json.dumps({
        "utterances": 12000, "trained_parameters": 2229972, "train_steps": 2880, "train_s": 300.0,
        "train_seconds": 300.0, "options": {"batch": 512, "lr": 0.002, "copy_weight": 4.0, "span_len": [2, 4]},
        "steps": [{"step": 2800, "copied": 0.8793, "kept_no_bias": 0.9823}]}), "utf-8")

    dest = tmp_path / "installed"
    assert install_model.main([str(results), "--seaco", str(seaco), "--dest", str(dest)]) == 0
    assert (dest / "asr" / "model.pt").read_bytes() == (seaco / "model.pt").read_bytes()
    metrics = json.loads((dest / "metrics.json").read_text("utf-8"))
    assert metrics["hotword_recall_with"] == 0.775 and metrics["cer_fp32_with_hotwords"] == 25.53
    card = (dest / "MODEL_CARD.md").read_text("utf-8")
    assert "2,880 steps" in card and "77.5% of the held-out traps" in card
    assert "MODEL=/tmp/r1/models/asr TRAIN_S=300 bash training/gpu_seaco.sh" in card
    assert "seaco" in json.loads((dest / "training-log.json").read_text("utf-8"))

    (seaco / "metrics_new.json").write_text(json.dumps({**stage2, "cer_fp32": 22.48}), "utf-8")
    with pytest.raises(SystemExit, match="was not trained on"):
        install_model.main([str(results), "--seaco", str(seaco), "--dest", str(tmp_path / "other")])

    # A second round that continued from the installed model: the card keeps the first round's
    # commands, adds its installation and this round's (init, lr, seed), and states what the
    # replaced model measured.
    first = card.split("```")[1].strip("\n").splitlines()
    round2 = {**logs["asr"], "options": {**logs["asr"]["options"], "init": str(dest / "asr"), "lr": "0.001",
                                         "seed": "1", "size": "deep", "tone_frames": "True"}}
    (results / "logs.json").write_text(json.dumps({"asr": round2, "punc": logs["punc"]}), "utf-8")
    better = {**stage1, "cer_fp32": 13.21, "start_within_80ms": 0.8123}
    (results / "metrics.json").write_text(json.dumps(better), "utf-8")
    (seaco / "metrics_new.json").write_text(json.dumps({**stage2, **better}), "utf-8")
    assert install_model.main([str(results), "--seaco", str(seaco), "--dest", str(dest)]) == 0
    card = (dest / "MODEL_CARD.md").read_text("utf-8")
    block = card.split("```")[1].strip("\n").splitlines()
    assert len(first) == 3 and block[: len(first)] == first
    assert block[len(first)].startswith("python training/install_model.py training/out --seaco training/out-seaco")
    assert block[len(first) + 1].startswith(f"ASR_INIT={dest / 'asr'} ASR_LR=0.001 ASR_SEED=1 ASR_SIZE=deep "
                                            "TONE_FRAMES=1 WORK=/tmp/r2 bash training/gpu_run.sh")
    assert block[len(first) + 2].startswith("MODEL=/tmp/r2/models/asr TRAIN_S=300 bash training/gpu_seaco.sh")
    assert "(that model: CER 21.05%, character starts within 80 ms 0.6832" in card
    assert json.loads((dest / "metrics.json").read_text("utf-8"))["cer_fp32"] == 13.21
