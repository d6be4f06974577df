"""Train the demonstration punctuation model: funasr's `CTTransformer` (the released model's
layout, shrunk) on the corpus's punctuated training paragraphs, and export it in funasr's format.

Input is what the recogniser outputs (characters without marks); the label of each character is
the mark after it: `_` (none), `，`, `。`, `？` or `、` (the released model's classes). Windows of
8-100 characters are cut from paragraphs at random, so the model sees sentence ends inside and at
the edges of a window, as `asr.pipeline.punc` feeds it.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import random
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from espeak import is_cjk  # noqa: E402

SIZES = {
    "demo": {"dim": 96, "heads": 4, "ff": 384, "blocks": 3},
    "dry": {"dim": 32, "heads": 2, "ff": 64, "blocks": 1},
}


def punc_config(size: dict[str, int]) -> dict[str, Any]:
    import yaml

    text = resources.files("asr.engine.model_configs").joinpath("ct_punc.config.yaml").read_text("utf-8")
    conf = copy.deepcopy(yaml.safe_load(text))
    d = size["dim"]
    conf["model_conf"].update(embed_unit=d, att_unit=d)
    conf["encoder_conf"].update(input_size=d, output_size=d, attention_heads=size["heads"],
                                linear_units=size["ff"], num_blocks=size["blocks"])
    return conf


def examples(paragraphs: list[str], classes: list[str], index: dict[str, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, class per token) per paragraph; characters outside the vocabulary are <unk>."""
    unk = index["<unk>"]
    cls = {c: i for i, c in enumerate(classes)}
    out = []
    for para in paragraphs:
        ids, labels = [], []
        for ch in para:
            if is_cjk(ch):
                ids.append(index.get(ch, unk))
                labels.append(cls["_"])
            elif ch in cls and labels:
                labels[-1] = cls[ch]
        if len(ids) >= 4:
            out.append((np.array(ids, np.int64), np.array(labels, np.int64)))
    return out


def batch(data: list[tuple[np.ndarray, np.ndarray]], rng: random.Random, n: int, device: torch.device,
          max_len: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for _ in range(n):
        ids, labels = data[rng.randrange(len(data))]
        length = rng.randint(min(8, len(ids)), min(max_len, len(ids)))
        start = rng.randint(0, len(ids) - length)
        xs.append(ids[start : start + length])
        ys.append(labels[start : start + length])
    longest = max(len(x) for x in xs)
    x = np.zeros((n, longest), np.int64)
    y = np.zeros((n, longest), np.int64)  # 0 (<unk>) is the ignored padding class (ignore_id 0)
    for i, (a, b) in enumerate(zip(xs, ys)):
        x[i, : len(a)] = a
        y[i, : len(b)] = b
    lens = torch.tensor([len(a) for a in xs], dtype=torch.int32)
    return torch.from_numpy(x).to(device), lens.to(device), torch.from_numpy(y).to(device)


def export(model: torch.nn.Module, conf: dict[str, Any], tokens: list[str], out: Path, info: dict[str, Any]) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in model.state_dict().items()}
    torch.save(state, out / "model.pt")
    (out / "config.yaml").write_text(yaml.safe_dump(conf, allow_unicode=True, sort_keys=False), "utf-8")
    (out / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False), "utf-8")
    (out / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "punctuation", "model": {"type": "funasr"},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "tokenizer_conf": {"token_list": "tokens.json"}},
        "generated": {"weights": "trained", "data": "punctuated corpus text (demonstration only)", **info},
    }, indent=1, ensure_ascii=False), "utf-8")


def evaluate(model: Any, data: list[tuple[np.ndarray, np.ndarray]], device: torch.device) -> dict[str, float]:
    """Per-mark precision/recall on whole held-out paragraphs (up to 100 characters)."""
    model.eval()
    tp: dict[int, int] = {}
    fp: dict[int, int] = {}
    fn: dict[int, int] = {}
    with torch.inference_mode():
        for ids, labels in data:
            ids, labels = ids[:100], labels[:100]
            lens = torch.tensor([len(ids)], dtype=torch.int32).to(device)
            y, _ = model.punc_forward(torch.from_numpy(ids)[None].to(device), lens)
            pred = y[0].argmax(-1).cpu().numpy()
            for p, t in zip(pred, labels):
                if p == t and t > 1:
                    tp[t] = tp.get(t, 0) + 1
                else:
                    if p > 1:
                        fp[p] = fp.get(p, 0) + 1
                    if t > 1:
                        fn[t] = fn.get(t, 0) + 1
    out = {}
    for c in sorted(set(tp) | set(fn)):
        prec = tp.get(c, 0) / max(1, tp.get(c, 0) + fp.get(c, 0))
        rec = tp.get(c, 0) / max(1, tp.get(c, 0) + fn.get(c, 0))
        out[f"class{c}_precision"] = round(prec, 3)
        out[f"class{c}_recall"] = round(rec, 3)
    model.train()
    return out


def train(corpus: Path, out: Path, size: str = "demo", device: str = "auto", train_seconds: float = 90.0,
          max_steps: int | None = None, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
          log_every: int = 50) -> dict[str, Any]:
    from asr.engine.model import import_funasr

    import_funasr()
    from funasr.register import tables

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    with gzip.open(corpus, "rt", encoding="utf-8") as f:
        data = json.load(f)
    tokens = data["tokens"]
    index = {t: i for i, t in enumerate(tokens)}
    conf = punc_config(SIZES[size])
    classes = conf["model_conf"]["punc_list"]
    train_data = examples(data["punc_train"], classes, index)
    dev_data = examples(data["punc_dev"], classes, index)
    torch.manual_seed(seed)
    model = tables.model_classes.get("CTTransformer")(
        encoder=conf["encoder"], encoder_conf=conf["encoder_conf"], vocab_size=len(tokens), **conf["model_conf"]
    ).to(dev)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    log: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters()), "steps": []}
    t0 = time.time()
    step = 0
    running = 0.0
    while True:
        progress = (time.time() - t0) / train_seconds
        if max_steps is not None:
            progress = max(progress, step / max_steps)
        if progress >= 1:
            break
        for g in optim.param_groups:
            g["lr"] = lr * min(1.0, progress / 0.05 + 0.01) * max(0.05, 1 - progress)
        x, lens, y = batch(train_data, rng, batch_size, dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits, _ = model.punc_forward(x, lens)
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=0
        )
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optim.step()
        step += 1
        running += float(loss)
        if step % log_every == 0:
            log["steps"].append({"step": step, "loss": round(running / log_every, 4), "t": round(time.time() - t0, 1)})
            print("punc", json.dumps(log["steps"][-1]), flush=True)
            running = 0.0
    log["train_steps"] = step
    log["train_s"] = round(time.time() - t0, 1)
    log["dev"] = evaluate(model, dev_data, dev)
    model.eval()
    export(model, conf, tokens, out, {"steps": step, "size": size, "train_s": log["train_s"]})
    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the demonstration punctuation model.")
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--log", type=Path)
    p.add_argument("--size", choices=sorted(SIZES), default="demo")
    p.add_argument("--device", default="auto")
    p.add_argument("--train-seconds", type=float, default=90.0)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--log-every", type=int, default=50)
    a = p.parse_args(argv)
    log = train(a.corpus, a.out, a.size, a.device, a.train_seconds, a.max_steps, a.batch_size, log_every=a.log_every)
    if a.log:
        a.log.write_text(json.dumps(log, indent=1), "utf-8")
    print(json.dumps({k: v for k, v in log.items() if k != "steps"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
