"""Model loading: find the model directory (local or ModelScope cache), build funasr's classes,
load the weights strictly.

funasr's own classes build the network; we only make loading strict and fast to fail:
funasr skips mismatched tensors with a warning and spends ~20 s retrying the hub for a path
that does not exist, both of which hide real mistakes from users.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from asr.errors import ModelLoadError

log = logging.getLogger(__name__)

_REQUIRED_FILES = ("config.yaml", "model.pt", "tokens.json", "am.mvn")
_HUB_HOST = ("www.modelscope.cn", 443)
_import_lock = threading.Lock()


def import_funasr() -> None:
    """Import funasr once, quietly, and fail loudly if the SeACo model did not register.

    `import funasr` imports every submodule and swallows errors, so a missing dependency would
    otherwise surface later as "model is not registered".
    """
    with _import_lock:
        # funasr's import prints a notice about ffmpeg (which we do not use: PyAV decodes) and
        # pulls in pydub, which warns about the same; users should see only our own messages.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)
            import funasr
        from funasr.register import tables

        if tables.model_classes.get("SeacoParaformer") is None:
            errors = funasr.get_import_errors() if hasattr(funasr, "get_import_errors") else {}
            raise ModelLoadError(
                "funasr is installed but SeacoParaformer did not register; import errors: "
                f"{errors or 'unknown'}"
            )


@dataclass(frozen=True)
class ModelFiles:
    """Paths of one model directory's parts."""

    root: Path
    config: Path
    weights: Path
    tokens: Path
    cmvn: Path
    seg_dict: Path | None

    @classmethod
    def from_dir(cls, root: Path) -> ModelFiles:
        missing = [name for name in _REQUIRED_FILES if not (root / name).is_file()]
        if missing:
            raise ModelLoadError(
                f"{root} is not a complete model directory: missing {', '.join(missing)}."
            )
        seg_dict = root / "seg_dict"
        if not seg_dict.is_file():
            # Without seg_dict every hotword silently becomes one <unk>: say so once.
            log.warning("%s has no seg_dict: hotwords will be split into single characters", root)
        return cls(root, root / "config.yaml", root / "model.pt", root / "tokens.json",
                   root / "am.mvn", seg_dict if seg_dict.is_file() else None)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection(_HUB_HOST, timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_model_dir(
    model: str,
    cache_dir: Path,
    required: tuple[str, ...] = _REQUIRED_FILES,
    *,
    how_to_set: str = "start with --model DIR (or ASR_ENGINE__MODEL=DIR)",
) -> Path:
    """A local directory as is; a ModelScope id from the cache, downloading it once if needed.

    `required` names the files a complete cached copy has (other model kinds: VAD, punctuation,
    speaker); `how_to_set` tells the user how to point this model at a directory (the hint of
    the error). Offline with nothing cached, fails within seconds with a message saying what to do.
    """
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    if local.is_absolute() or model.startswith((".", "~")) or model.count("/") != 1:
        raise ModelLoadError(f"Model directory not found: {model}")
    cached = cache_dir / model
    if cached.is_dir() and all((cached / f).is_file() for f in required):
        return cached
    hint = (
        f"The model '{model}' is not in the cache ({cache_dir}) and the model hub cannot be "
        "reached. Download it on a connected machine (modelscope download --model "
        f"{model} --local_dir DIR), then {how_to_set}."
    )
    if not _hub_reachable():
        raise ModelLoadError(hint)
    try:
        from modelscope import snapshot_download
    except ImportError as exc:
        raise ModelLoadError(hint + " (the modelscope package is not installed)") from exc
    try:
        path = snapshot_download(model, local_dir=str(cached))
    except Exception as exc:  # the hub client raises many unrelated types
        raise ModelLoadError(f"Downloading '{model}' failed: {exc}. {hint}") from exc
    return Path(path)


@dataclass
class LoadedModel:
    """funasr's network plus what our engine needs around it."""

    model: torch.nn.Module
    files: ModelFiles
    config: dict[str, Any]
    token_list: list[str]
    cmvn: np.ndarray  # shape (2, dim): row 0 adds (-mean), row 1 scales (1/std)
    seg_dict: dict[str, list[str]]

    @property
    def frontend_conf(self) -> dict[str, Any]:
        return dict(self.config.get("frontend_conf", {}))


def load_seg_dict(path: Path | None) -> dict[str, list[str]]:
    if path is None:
        return {}
    table: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts:
            table[parts[0]] = parts[1:]
    return table


def read_model_config(model_dir: Path, model_class: str, what: str) -> dict[str, Any]:
    """A funasr model directory's config.yaml, checked to describe `model_class` (`what` names it
    for the user). Fails here rather than in funasr, which treats a missing directory as a hub id
    and retries the network for ~20 s."""
    path = model_dir / "config.yaml"
    if not path.is_file():
        raise ModelLoadError(f"No {what} model at {model_dir}: config.yaml is missing.")
    conf = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(conf, dict) or conf.get("model") != model_class:
        raise ModelLoadError(f"{path} does not describe a {what} model ({model_class}).")
    return conf


def _read_cmvn(path: Path) -> np.ndarray:
    from asr.engine.frontend import load_cmvn

    try:
        return load_cmvn(path)
    except ValueError as exc:
        raise ModelLoadError(f"{path} is not a valid am.mvn file: {exc}") from exc


def load_model(model_dir: Path, device: torch.device) -> LoadedModel:
    """Build the network with funasr's registry and load model.pt strictly onto `device`."""
    import_funasr()
    from funasr.register import tables

    files = ModelFiles.from_dir(model_dir)
    config = yaml.safe_load(files.config.read_text(encoding="utf-8"))
    try:
        token_list = json.loads(files.tokens.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{files.tokens} is not valid JSON: {exc}") from exc
    model_class = tables.model_classes.get(config.get("model", ""))
    if model_class is None:
        raise ModelLoadError(f"Unknown model class in {files.config}: {config.get('model')!r}")
    frontend_conf = config.get("frontend_conf", {})
    input_size = frontend_conf.get("n_mels", 80) * frontend_conf.get("lfr_m", 1)
    build_args = {k: v for k, v in config.items() if k != "model_conf"}
    with torch.device("meta"):
        # Build on the meta device: no time is spent on random init that the weights replace.
        model = model_class(**config.get("model_conf", {}), **build_args,
                            vocab_size=len(token_list), input_size=input_size)
    try:
        state = torch.load(files.weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"Could not read weights {files.weights}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ModelLoadError(
            f"The weights in {files.weights} do not fit the config: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(wrong)} with other shapes (e.g. {wrong[:3]})."
        )
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device).eval()
    model.requires_grad_(False)
    return LoadedModel(
        model=model,
        files=files,
        config=config,
        token_list=token_list,
        cmvn=_read_cmvn(files.cmvn),
        seg_dict=load_seg_dict(files.seg_dict),
    )


def default_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"Device {name} was asked for but no CUDA GPU is available.")
    return torch.device(name)


os.environ.setdefault("MODELSCOPE_LOG_LEVEL", "40")
