"""Export a model directory to ONNX in the layouts the peer runtimes load (issue #17).

    python -m asr export-onnx MODEL_DIR OUT_DIR [--quantize]

OUT_DIR then holds:
- `model.onnx` (fp32) and, with --quantize, `model.int8.onnx`, plus `tokens.txt`: what
  sherpa-onnx's `OfflineRecognizer.from_paraformer(paraformer=..., tokens=...)` loads. The model
  carries the metadata sherpa-onnx reads (vocab_size, lfr_window_size, lfr_window_shift, neg_mean,
  inv_stddev).
- `model.onnx`, `model_quant.onnx` (the same int8 file), `config.yaml`, `am.mvn`, `tokens.json`:
  what funasr-onnx's `Paraformer(model_dir, quantize=...)` loads.

The graph is funasr's own export of the plain Paraformer path (`funasr.models.paraformer.
export_meta`: encoder, CIF predictor, decoder -> log-probabilities and token counts). SeACo's
hotword path is not in it: sherpa-onnx's and funasr-onnx's paraformer runners feed only
(speech, speech_lengths), and the timestamp head is left out because neither runner reads it
(sherpa-onnx ignores extra outputs; the comparison in `asr bench` says so). The int8 file uses
funasr's own quantisation settings (`funasr.utils.export_utils._onnx`): dynamic int8 MatMuls, per
output channel, the output layer kept fp32; the int8 models that sherpa-onnx publishes for
funasr's paraformers are that file renamed.

onnx, onnxruntime (and sherpa-onnx to run the result) are developer tools: imported here only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

OPSET = 14  # funasr's export default; onnxruntime and sherpa-onnx's bundled runtime accept it


def _plain_paraformer(loaded: Any) -> torch.nn.Module:
    """funasr's export wrapper around the loaded network: (speech, speech_lengths) -> (logits,
    token_num). `load_model` imports only the funasr modules the config names, so the modules
    holding the `...Export` classes are imported here first."""
    from asr.engine.model import funasr_registry

    cfg = loaded.config
    funasr_registry({k: f"{cfg[k]}Export" for k in ("encoder", "predictor", "decoder")})
    from funasr.models.paraformer.export_meta import export_rebuild_model

    model = export_rebuild_model(loaded.model, max_seq_len=512, device="cpu", type="onnx",
                                 encoder=cfg["encoder"], predictor=cfg["predictor"], decoder=cfg["decoder"])
    return model.eval()


def sherpa_metadata(loaded: Any) -> dict[str, str]:
    """The metadata sherpa-onnx's paraformer model reads: LFR window, vocabulary size and the
    CMVN that it applies itself after LFR ((x + neg_mean) * inv_stddev, as am.mvn says)."""
    conf = loaded.frontend_conf
    neg_mean, inv_stddev = loaded.cmvn[0], loaded.cmvn[1]
    return {
        "model_type": "paraformer",
        "version": "1",
        "model_author": "asr export-onnx",
        "comment": f"exported from {loaded.files.root.name} by python -m asr export-onnx",
        "vocab_size": str(len(loaded.token_list)),
        "lfr_window_size": str(conf.get("lfr_m", 7)),
        "lfr_window_shift": str(conf.get("lfr_n", 6)),
        "neg_mean": ",".join(repr(float(v)) for v in neg_mean),
        "inv_stddev": ",".join(repr(float(v)) for v in inv_stddev),
    }


def _add_metadata(path: Path, meta: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(path))


def quantize(src: Path, dst: Path) -> None:
    """funasr's own int8 settings (see the module docstring)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node]
    quantize_dynamic(model_input=str(src), model_output=str(dst), op_types_to_quantize=["MatMul"],
                     per_channel=True, reduce_range=False, weight_type=QuantType.QUInt8,
                     nodes_to_exclude=[n for n in nodes if "output" in n])


def export_onnx(model_dir: Path, out_dir: Path, *, quantize_int8: bool = False) -> dict[str, Path]:
    """Write the layouts described in the module docstring; returns the files by role."""
    from asr.engine.model import load_model

    start = time.perf_counter()
    loaded = load_model(Path(model_dir), torch.device("cpu"))
    loaded.model.float()  # checkpoints may hold bf16/fp16 tensors; the export is fp32
    model = _plain_paraformer(loaded)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    dummy = model.export_dummy_inputs()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter, which funasr's export code is written for (dynamic_axes,
        # tracing through its Python-side control flow); the tracer's warnings are about that.
        # funasr's own `AutoModel.export()` fails under torch 2.13 ("Failed to convert
        # 'dynamic_axes' to 'dynamic_shapes'"): torch.onnx.export now defaults to dynamo=True.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, dummy, str(onnx_path), input_names=model.export_input_names(),
                          output_names=model.export_output_names(), dynamic_axes=model.export_dynamic_axes(),
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    _add_metadata(onnx_path, sherpa_metadata(loaded))
    files = {"model": onnx_path}
    tokens = out_dir / "tokens.txt"
    tokens.write_text("".join(f"{tok} {i}\n" for i, tok in enumerate(loaded.token_list)), encoding="utf-8")
    files["tokens_txt"] = tokens
    for name in ("config.yaml", "am.mvn", "tokens.json"):
        shutil.copyfile(loaded.files.root / name, out_dir / name)
        files[name] = out_dir / name
    log.warning("exported %s in %.1f s", onnx_path, time.perf_counter() - start)
    if quantize_int8:
        start = time.perf_counter()
        int8 = out_dir / "model.int8.onnx"
        quantize(onnx_path, int8)
        quant = out_dir / "model_quant.onnx"  # funasr-onnx's name for the same file
        quant.unlink(missing_ok=True)
        try:
            os.link(int8, quant)
        except OSError:
            shutil.copyfile(int8, quant)
        files["model_int8"], files["model_quant"] = int8, quant
        log.warning("quantized %s in %.1f s", int8, time.perf_counter() - start)
    return files


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    files = export_onnx(Path(args.model_dir), Path(args.out_dir), quantize_int8=args.quantize)
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=1))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export-onnx", help="export the model to ONNX for sherpa-onnx and funasr-onnx (benchmarks)")
    p.add_argument("model_dir", help="a model directory (config.yaml, model.pt, tokens.json, am.mvn)")
    p.add_argument("out_dir")
    p.add_argument("--quantize", action="store_true", help="also write the int8 model (model.int8.onnx)")
    p.set_defaults(func=run)
