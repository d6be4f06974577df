"""Generate SeACo-Paraformer model directories in funasr's format with seeded random weights.

The product is tested and benchmarked without a model hub: `tiny` builds in a second for the test
suite, `full` has the released model's exact architecture (247M parameters) for benchmarks. The
network is built through funasr's own registry, so loading code is exercised exactly as with the
released checkpoint. Random weights recognise nothing: never read their text as quality.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

Size = Literal["tiny", "full"]

_SPECIALS = ["<blank>", "<s>", "</s>"]
# A few English words and BPE pieces so mixed Chinese/English postprocessing is exercised.
_ENGLISH_WORDS = {"ok": ["ok"], "hello": ["hel@@", "lo"], "gpu": ["g@@", "pu"], "api": ["a@@", "pi"]}


def reference_config(name: str = "seaco_paraformer_large") -> dict[str, Any]:
    """The released model's config.yaml (architecture only), shipped inside the package."""
    text = resources.files("asr.engine.model_configs").joinpath(f"{name}.config.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def _tiny_config(conf: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    conf = copy.deepcopy(conf)
    dim = 32
    conf["encoder_conf"].update(output_size=dim, attention_heads=2, linear_units=64, num_blocks=2)
    conf["decoder_conf"].update(attention_heads=2, linear_units=64, num_blocks=2, att_layer_num=2)
    conf["seaco_decoder_conf"].update(attention_heads=2, linear_units=64, num_blocks=1)
    conf["predictor_conf"]["idim"] = dim
    conf["model_conf"].update(inner_dim=dim, NO_BIAS=vocab_size - 2)
    return conf


def _vocabulary(size: Size) -> list[str]:
    pieces = sorted({p for ps in _ENGLISH_WORDS.values() for p in ps})
    n_cjk = 400 if size == "tiny" else 8404 - len(_SPECIALS) - len(pieces) - 1
    cjk = [chr(0x4E00 + i) for i in range(n_cjk)]
    return _SPECIALS + cjk + pieces + ["<unk>"]


def _write_am_mvn(path: Path, dim: int, rng: np.random.Generator) -> None:
    # Kaldi nnet text: <AddShift> holds -mean, <Rescale> holds 1/std (funasr's load_cmvn reads both).
    mean = rng.normal(8.0, 2.0, dim)
    inv_std = 1.0 / rng.uniform(2.0, 4.0, dim)

    def row(values: np.ndarray) -> str:
        return "<LearnRateCoef> 0 [ " + " ".join(f"{v:.6f}" for v in values) + " ]"

    lines = [
        "<Nnet>",
        f"<Splice> {dim} {dim}",
        "[ 0 ]",
        f"<AddShift> {dim} {dim}",
        row(-mean),
        f"<Rescale> {dim} {dim}",
        row(inv_std),
        "</Nnet>",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_model_dir(path: str | Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write a loadable model directory (config.yaml, model.pt, tokens.json, am.mvn, seg_dict).

    Deterministic for a given (size, seed). Returns the directory.
    """
    from asr.engine.model import funasr_registry

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokens = _vocabulary(size)
    conf = reference_config()
    conf["model_conf"]["NO_BIAS"] = len(tokens) - 27 if size == "full" else len(tokens) - 2
    if size == "tiny":
        conf = _tiny_config(conf, len(tokens))
    lfr_dim = conf["frontend_conf"]["n_mels"] * conf["frontend_conf"]["lfr_m"]

    tables = funasr_registry(conf)
    torch.manual_seed(seed)
    model_class = tables.model_classes.get(conf["model"])
    model = model_class(**conf["model_conf"], **{k: v for k, v in conf.items() if k != "model_conf"},
                        vocab_size=len(tokens), input_size=lfr_dim)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, out / "model.pt")

    (out / "config.yaml").write_text(yaml.safe_dump(conf, allow_unicode=True, sort_keys=False), "utf-8")
    (out / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False), "utf-8")
    _write_am_mvn(out / "am.mvn", lfr_dim, np.random.default_rng(seed))
    seg_lines = [f"{t} {t}" for t in tokens[len(_SPECIALS):-1] if "@@" not in t]
    seg_lines += [f"{w} {' '.join(p)}" for w, p in _ENGLISH_WORDS.items()]
    (out / "seg_dict").write_text("\n".join(seg_lines) + "\n", encoding="utf-8")
    write_configuration(out, {"size": size, "seed": seed, "weights": "random"})
    return out


def write_configuration(out: Path, generated: dict[str, Any]) -> None:
    """configuration.json in the released model's layout (funasr resolves the paths relative to
    the directory), plus how the directory was made."""
    (out / "configuration.json").write_text(
        json.dumps({
            "framework": "pytorch",
            "task": "auto-speech-recognition",
            "model": {"type": "funasr"},
            "file_path_metas": {
                "init_param": "model.pt",
                "config": "config.yaml",
                "tokenizer_conf": {"token_list": "tokens.json", "seg_dict_file": "seg_dict"},
                "frontend_conf": {"cmvn_file": "am.mvn"},
            },
            "generated": generated,
        }, indent=1, ensure_ascii=False),
        "utf-8",
    )
