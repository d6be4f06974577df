"""Stage 2: SeACo's bias path trained on the frozen recogniser, as the released model was trained.

Result (2026-12-02, `bash training/gpu_seaco.sh`, one H200, 3,854 steps of 512 in 420 s with
respelling at every draw and random spans): hotword trap recall 0 -> 75% on 40 held-out traps,
1% false insertions; installed in tests/assets/demo-model. The history below is why it took this.

Stage 1 (train_asr.py) trains the recogniser and the bias path together; in its time the bias
path learnt to answer NO_BIAS everywhere (hotword recall 0 with and without hotwords, funasr's own
inference agreeing). The bias path's loss never changes the recogniser (its inputs are detached),
so here the recogniser is frozen: for each utterance the CIF embeddings (at the transcript's
length, as in training) and the decoder's hidden states are computed once, and the bias encoder,
the SeACo decoder and the bias output layer (2.2 M parameters) train on them with the same hotword
lists and the same loss as stage 1 (`sample_hotwords`, `seaco_logits`). Half the utterances hold a
respelled span, the case the bias path exists for.

Not enough yet: on the H200, 16,000 utterances and 1,520 steps of 128 (110 s) raised the share of
listed positions the head copies from 4.5% to 7.4% (it keeps NO_BIAS right at 99.5%), and the
hotword recall stayed 0, so gpu_run.sh does not run it and its weights were not installed. On this
project's 2-core CPU (2026-12-02), `--copy-weight 10 --lr 2e-3`, 3,000 utterances, 2,231 steps of
64: copies 67% and NO_BIAS kept 74% on the training batches, but held-out recall still 0 and the
CER with the trap list given rose 24.0 -> 28.5% (the head fires at the wrong places; with one
listed word the text did not change at all on 8 traps): not installed either.

Why (issue #12, measured on that head; inference is not the cause: the product's engine, funasr's
AutoModel and this file's training path give the same bias distributions, to 3 decimals, on a
trap with the same list): respelled positions of 48 of its own training utterances copied 96% with
a group list but 16% with only the utterance's word listed (it had never seen a short list), and
13% / 1% on unseen utterances (it had learnt utterance -> spelling: frozen outputs and a fixed
respelling per utterance). Hence `sample_hotwords`'s per-utterance lists and `Respeller`. 255
steps from that head with both (`--copy-weight 4 --respell 0.5`, 2,000 utterances, a loaded CPU):
own-word-only copies 63% on the seen utterances (so the spelling now comes from the list) and 14%
on unseen ones, one listed word changes 13 of 40 trap outputs (was 1), recall still 0: it still
finds the span by memory, not by sound. Next: far more steps, and spans at random places in every
utterance (the corpus span's place can be memorised too): `--random-span-p` (Respeller), run on
the H200 by gpu_seaco.sh with the shipped model measured beside it (not run yet).

    python training/train_seaco.py MODEL_DIR --corpus corpus.json.gz [--utterances 8000] [--train-seconds 600]

MODEL_DIR (funasr's format, from stage 1) gets the new bias weights in its model.pt (fp16 as
written by stage 1); every other weight is unchanged.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import train_asr  # noqa: E402
from corpus import respell  # noqa: E402
from synth import augment, synthesize  # noqa: E402

TRAINED = ("bias_encoder.", "seaco_decoder.", "hotword_output_layer.")


def load_model(model_dir: Path, device: torch.device) -> tuple[Any, dict[str, Any], list[str]]:
    import yaml

    conf = yaml.safe_load((model_dir / "config.yaml").read_text("utf-8"))
    tokens = json.loads((model_dir / "tokens.json").read_text("utf-8"))
    model = train_asr.build_model(conf, len(tokens))
    state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    train_asr.use_vectorised_cif()
    return model.to(device), conf, tokens


def choose(corpus: train_asr.Corpus, n: int, rng: random.Random) -> train_asr.Corpus:
    """n utterances, half of them with a respelled span (when there are enough)."""
    spelled = [i for i, s in enumerate(corpus.spans) if s is not None]
    plain = [i for i, s in enumerate(corpus.spans) if s is None]
    k = min(len(spelled), n // 2)
    rows = rng.sample(spelled, k) + rng.sample(plain, min(len(plain), n - k))
    return train_asr.Corpus(corpus.tokens, [corpus.ids[i] for i in rows], [corpus.dec_ids[i] for i in rows],
                            [corpus.spans[i] for i in rows], [corpus.texts[i] for i in rows])


@dataclass
class Frozen:
    """Per utterance: CIF embeddings and decoder hidden states of its tokens and </s> ([n + 1, D])."""

    acoustic: list[torch.Tensor]
    hidden: list[torch.Tensor]
    src: list[int]  # row in the corpus


@torch.no_grad()
def recogniser_outputs(model: Any, conf: dict[str, Any], model_dir: Path, store: train_asr.Store,
                       corpus: train_asr.Corpus, device: torch.device, batch_audio_s: float,
                       seed: int) -> Frozen:
    from espeak import ESPEAK_RATE
    from funasr.models.transformer.utils.nets_utils import make_pad_mask

    from asr.engine.frontend import load_cmvn

    fe = train_asr.frontend(conf, load_cmvn(model_dir / "am.mvn"), device)
    gen = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    out = Frozen([], [], [])
    for rows in store.batches(int(batch_audio_s * ESPEAK_RATE), random.Random(seed)):
        waves, lens = store.waves(rows)
        feats, feat_lens = fe(augment(waves, lens, gen), lens)
        enc, enc_lens = model.encode(feats, feat_lens)
        mask = (~make_pad_mask(enc_lens, maxlen=enc.size(1)))[:, None, :].to(device)
        src = [int(store.src[r]) for r in rows]
        n = torch.tensor([len(corpus.dec_ids[i]) for i in src], device=device)
        ys = train_asr.pad([corpus.dec_ids[i] for i in src], -1, device)
        ys = torch.cat([ys, torch.full_like(ys[:, :1], -1)], 1)
        ys = torch.where(torch.arange(ys.shape[1], device=device)[None] == n[:, None], model.eos, ys)
        acoustic = model.predictor(enc.float(), ys, mask, ignore_id=-1)[0]
        hidden = model.decoder(enc, enc_lens, acoustic, n + 1, return_hidden=True)[0]
        for b, i in enumerate(src):
            k = int(n[b]) + 1
            out.acoustic.append(acoustic[b, :k].half().cpu())
            out.hidden.append(hidden[b, :k].half().cpu())
            out.src.append(i)
    return out


class Respeller:
    """A new spelling of an utterance's hotword span each time the utterance is drawn.

    The recogniser's outputs are computed once per utterance (`recogniser_outputs`), and each
    utterance's respelling was fixed in the corpus, so the head could learn utterance -> spelling
    instead of copying the listed word: on its own training utterances it copied 96% of the
    respelled positions, on unseen ones 13% (issue #12; the traps are respellings no training
    sentence holds). The sound of a span does not depend on its spelling (`corpus.respell` keeps
    espeak-ng's reading of the word), so the frozen outputs stay right for any homophone spelling:
    drawn anew each time, the spelling can only be learnt from the list. Utterances without a
    respelled span get one (a random 2-3 token span) with probability `fresh_p`.

    The corpus's span is always at the same place in its utterance, so the head could still
    find it by memory, not by sound (issue #12: one listed word changed 13 of 40 trap outputs,
    recall 0). With probability `random_span_p` a draw instead respells a random span of
    `span_len` tokens (2-4: funasr's own SeACo training samples hotwords of at least 2 tokens,
    and a one-character word might teach the head to fire on one matching syllable, at the
    wrong places it already fires at) anywhere in the utterance, any utterance, the corpus's span
    written back in its common spelling (it sounds the same); where a few tries find no span that
    can be respelled, the draw falls back to the corpus's span."""

    def __init__(self, tokens: list[str], ids: list[Any], avoid: set[str], min_count: int = 50,
                 fresh_p: float = 0.5, random_span_p: float = 0.0, span_len: tuple[int, int] = (2, 4)) -> None:
        import collections

        import numpy as np
        from corpus import homophone_sets, reading_table

        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        self.homophones = homophone_sets(reading_table(tokens))
        count = collections.Counter(int(i) for x in ids for i in x)
        # As corpus.build: characters the decoder is taught often (their embeddings say their sound).
        self.allowed = {tokens[i] for i, n in count.items() if n >= min_count}
        self.avoid = avoid  # the held-out trap words: never trained on
        self.fresh_p = fresh_p
        self.random_span_p = random_span_p
        self.span_len = span_len
        self._np = np

    def __call__(self, dec_ids: Any, ids: Any, span: tuple[int, int] | None,
                 rng: random.Random) -> tuple[Any, tuple[int, int] | None]:
        """(transcript ids, span) with the span in a new spelling (unchanged where none is found)."""
        if self.random_span_p > 0 and len(dec_ids) >= self.span_len[0] and rng.random() < self.random_span_p:
            for _ in range(4):  # characters without a well-known homophone cannot be respelled
                n = rng.randint(self.span_len[0], min(self.span_len[1], len(dec_ids)))
                s = rng.randint(0, len(dec_ids) - n)
                out = self._respelled(dec_ids, dec_ids, s, s + n, rng)
                if out is not None:
                    return out, (s, s + n)
        if span is None:
            if rng.random() >= self.fresh_p or len(dec_ids) < 2:
                return ids, None
            n = rng.randint(2, min(3, len(dec_ids)))
            s = rng.randint(0, len(dec_ids) - n)
            span = (s, s + n)
        out = self._respelled(ids, dec_ids, span[0], span[1], rng)
        if out is None:
            return ids, (span if not self._same(ids, dec_ids) else None)
        return out, span

    def _respelled(self, ids: Any, dec_ids: Any, s: int, e: int, rng: random.Random) -> Any:
        """`ids` with dec_ids[s:e] (the common spelling) respelled, or None where it cannot be."""
        word = "".join(self.tokens[i] for i in dec_ids[s:e])
        new = respell(word, self.homophones, rng, allowed=self.allowed)
        if new is None or any(a in new for a in self.avoid):
            return None
        out = self._np.array(ids, copy=True)
        out[s:e] = [self.index[c] for c in new]
        return out

    @staticmethod
    def _same(a: Any, b: Any) -> bool:
        return len(a) == len(b) and all(int(x) == int(y) for x, y in zip(a, b))


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, no_bias: int, copy_weight: float,
                  smoothing: float = 0.1) -> torch.Tensor:
    """funasr's label-smoothed KL loss (LabelSmoothingLoss, per-position mean) with each listed
    position (a label that is a token, not NO_BIAS) weighted `copy_weight` times a NO_BIAS one:
    NO_BIAS is about 92% of the labels, and with equal weights the head learnt to answer it
    everywhere."""
    valid = labels >= 0
    logp = torch.log_softmax(logits.float(), dim=-1)
    size = logits.shape[-1]
    true = torch.full_like(logp, smoothing / (size - 1))
    true.scatter_(-1, labels.clamp(min=0)[..., None], 1.0 - smoothing)
    kl = (true * (true.log() - logp)).sum(-1)
    weight = torch.where(labels == no_bias, 1.0, copy_weight) * valid
    return (kl * weight).sum() / weight.sum().clamp(min=1.0)


def stack(parts: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(parts, batch_first=True).float().to(device)


def train(model_dir: Path, corpus_path: Path, utterances: int, train_seconds: float, device_name: str,
          batch: int = 64, lr: float = 1e-3, seed: int = 0, workers: int | None = None,
          batch_audio_s: float = 600.0, log_every: int = 50, copy_weight: float = 1.0,
          respell_p: float = 0.5, init: Path | None = None, random_span_p: float = 0.0,
          span_len: tuple[int, int] = (2, 4), finish_by: float | None = None) -> dict[str, Any]:
    t_start = time.time()
    device = torch.device("cuda" if device_name == "auto" and torch.cuda.is_available() else
                          (device_name if device_name != "auto" else "cpu"))
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, conf, tokens = load_model(model_dir, device)
    data, full = train_asr.load_corpus(corpus_path)
    assert full.tokens == tokens, "the corpus's vocabulary is not the model's"
    corpus = choose(full, utterances, rng)
    respeller = None
    if respell_p > 0:
        traps = {t["hotword"] for t in data.get("traps", [])} | {t["hotword"] for t in data["testset"]["hotwords"]}
        respeller = Respeller(tokens, full.ids, traps, fresh_p=respell_p, random_span_p=random_span_p,
                              span_len=span_len)
    log: dict[str, Any] = {"utterances": len(corpus.ids), "steps": [], "options": {
        "batch": batch, "lr": lr, "seed": seed, "copy_weight": copy_weight, "respell_p": respell_p,
        "random_span_p": random_span_p, "span_len": list(span_len), "init": str(init) if init else None}}

    t0 = time.time()
    speech = synthesize(corpus.texts, seed=seed + 1, workers=workers)
    log["synthesis_s"] = round(time.time() - t0, 1)
    print(f"synthesised {len(corpus.texts)} utterances in {log['synthesis_s']} s", flush=True)
    store = train_asr.Store(speech, corpus, device)
    frozen = recogniser_outputs(model, conf, model_dir, store, corpus, device, batch_audio_s, seed)
    del store, speech
    log["prepare_s"] = round(time.time() - t0, 1)
    print(f"recogniser outputs for {len(frozen.src)} utterances in {log['prepare_s']} s", flush=True)

    if init is not None:  # e.g. an earlier stage-2 run's bias path
        other = torch.load(init / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() for k, v in other.items() if k.startswith(TRAINED)}, strict=False)
    model.requires_grad_(False)
    params = [p for name, p in model.named_parameters() if name.startswith(TRAINED)]
    for p in params:
        p.requires_grad_(True)
    log["trained_parameters"] = sum(p.numel() for p in params)
    optim = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    opts = train_asr.TrainOptions(corpus=corpus_path, out=model_dir, lr=lr, train_seconds=train_seconds)
    model.train()
    model.decoder.eval()  # frozen: no dropout in the hotword embeddings it lends
    no_bias, sos = int(model.NO_BIAS), int(model.sos)
    t_train = time.time()
    if finish_by is not None and finish_by - t_train < train_seconds:
        # Synthesis time varies with the machine; the schedule spans what is left (as train_asr).
        print(f"training for {finish_by - t_train:.0f} s to finish in time (asked for {train_seconds:.0f} s)",
              flush=True)
        train_seconds = max(10.0, finish_by - t_train)
    log["train_seconds"] = train_seconds
    step, running = 0, {"loss": 0.0, "copy": 0.0, "copies": 0.0, "keep": 0.0, "keeps": 0.0}
    while (progress := (time.time() - t_train) / train_seconds) < 1.0:
        for group in optim.param_groups:
            group["lr"] = train_asr.lr_at(progress, opts)
        picks = rng.sample(range(len(frozen.src)), min(batch, len(frozen.src)))
        acoustic = stack([frozen.acoustic[k] for k in picks], device)
        hidden = stack([frozen.hidden[k] for k in picks], device)
        lens1 = torch.tensor([len(frozen.acoustic[k]) for k in picks], device=device)
        src = [frozen.src[k] for k in picks]
        if respeller is not None:
            drawn = [respeller(corpus.dec_ids[i], corpus.ids[i], corpus.spans[i], rng) for i in src]
            sub = train_asr.Corpus(tokens, [d[0] for d in drawn], [], [d[1] for d in drawn], [])
        else:
            sub = train_asr.Corpus(tokens, [corpus.ids[i] for i in src], [], [corpus.spans[i] for i in src], [])
        hot = train_asr.sample_hotwords(sub, list(range(len(picks))), no_bias, sos, rng, device)
        logits = train_asr.seaco_logits(model, acoustic, hidden, lens1, hot)
        labels = train_asr.seaco_labels(hot, logits.shape[1])
        loss = (model.criterion_seaco(logits.float(), labels) if copy_weight == 1.0
                else weighted_loss(logits, labels, no_bias, copy_weight))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optim.step()
        step += 1
        with torch.no_grad():
            pred = logits.argmax(-1)
            copy = (labels >= 0) & (labels != no_bias)
            keep = labels == no_bias
            running["loss"] += float(loss)
            running["copy"] += float(((pred == labels) & copy).sum())
            running["copies"] += float(copy.sum())
            running["keep"] += float(((pred == labels) & keep).sum())
            running["keeps"] += float(keep.sum())
        if step % log_every == 0:
            entry = {"step": step, "loss": round(running["loss"] / log_every, 4),
                     "copied": round(running["copy"] / max(1.0, running["copies"]), 4),
                     "kept_no_bias": round(running["keep"] / max(1.0, running["keeps"]), 4),
                     "t": round(time.time() - t_train, 1)}
            log["steps"].append(entry)
            print(json.dumps(entry), flush=True)
            running = dict.fromkeys(running, 0.0)
    log["train_steps"] = step
    log["train_s"] = round(time.time() - t_train, 1)

    state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    new = model.state_dict()
    for k in state:
        if k.startswith(TRAINED):
            state[k] = new[k].detach().to("cpu", state[k].dtype).contiguous()
    torch.save(state, model_dir / "model.pt")
    log["total_s"] = round(time.time() - t_start, 1)
    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train SeACo's bias path on the frozen demonstration recogniser.")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--utterances", type=int, default=8000)
    p.add_argument("--train-seconds", type=float, default=600.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int)
    p.add_argument("--log", type=Path, help="write the log (JSON) here")
    p.add_argument("--copy-weight", type=float, default=1.0,
                   help="weight of a listed position's loss against a NO_BIAS one (1: funasr's loss)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--respell", type=float, default=0.5,
                   help="respell the hotword span anew at each draw (see Respeller); also give this share "
                        "of the utterances without one a fresh span (0: the corpus's fixed spellings)")
    p.add_argument("--random-span-p", type=float, default=0.0,
                   help="with --respell: share of draws that respell a random span anywhere in the utterance "
                        "instead of the corpus's span (whose place can be memorised)")
    p.add_argument("--random-span-len", type=int, nargs=2, default=(2, 4), metavar=("MIN", "MAX"),
                   help="tokens in such a span")
    p.add_argument("--init", type=Path, help="start the bias path from this model directory's weights")
    p.add_argument("--finish-by", type=float, help="Unix time by which training must end")
    a = p.parse_args(argv)
    log = train(a.model_dir, a.corpus, a.utterances, a.train_seconds, a.device, a.batch, a.lr, a.seed, a.workers,
                log_every=a.log_every, copy_weight=a.copy_weight, respell_p=a.respell, init=a.init,
                random_span_p=a.random_span_p, span_len=tuple(a.random_span_len), finish_by=a.finish_by)
    if a.log:
        a.log.write_text(json.dumps(log, indent=1), "utf-8")
    print(json.dumps({k: v for k, v in log.items() if k != "steps"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
