"""Model loading: find the model directory (local or ModelScope cache), build funasr's classes,
load the weights strictly.

funasr's own classes build the network; we only make loading strict and fast to fail:
funasr skips mismatched tensors with a warning and spends ~20 s retrying the hub for a path
that does not exist, both of which hide real mistakes from users.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import json
import logging
import os
import pkgutil
import re
import socket
import sys
import threading
import types
import warnings
from collections.abc import Iterator
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


def funasr_registry(config: dict[str, Any] | None = None) -> Any:
    """funasr's class registry (`funasr.register.tables`) holding the classes `config` names.

    `import funasr` imports every one of its ~500 modules (11 s on the GPU box, 6 s here) and
    swallows their errors. Instead the package is entered without running its `__init__`, and
    only the modules that register the class names the model config mentions (`model`,
    `encoder`, `decoder`, `frontend`, ...) are imported, found by reading the source once
    (~1 s in all). Without a config, or when a name is not found that way, funasr is imported
    whole, as before. `funasr.AutoModel` still works: it imports the whole package on first use.
    """
    with _import_lock:
        # funasr's modules print a notice about ffmpeg (which we do not use: PyAV decodes) and
        # pull in pydub, which warns about the same; users should see only our own messages.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)
            _enter_funasr()
            from funasr.register import tables

            names = [v for v in (config or {}).values() if isinstance(v, str)]
            where = _registering_modules()
            missing = [n for n in names if n not in where] if config is not None else ["*"]
            for name in names:
                if name in where:
                    importlib.import_module(where[name])
            if missing:
                _import_all_of_funasr()
        model = (config or {}).get("model")
        if model and tables.model_classes.get(model) is None:
            import funasr

            raise ModelLoadError(
                f"funasr is installed but {model} did not register; import errors: "
                f"{getattr(funasr, 'get_import_errors', lambda: {})() or 'unknown'}"
            )
        return tables


def import_funasr() -> None:
    """All of funasr, imported once and quietly (the reference paths: AutoModel, make-model)."""
    funasr_registry(None)


def _enter_funasr() -> None:
    """Put the funasr package in sys.modules without running its __init__ (which imports every
    submodule); `AutoModel`/`AutoFrontend` and `get_import_errors` are provided lazily."""
    if "funasr" in sys.modules:
        return
    spec = importlib.util.find_spec("funasr")
    if spec is None or spec.origin is None:
        raise ModelLoadError("funasr is not installed (pip install -r requirements.txt).")
    root = Path(spec.origin).parent
    package = types.ModuleType("funasr")
    package.__file__ = spec.origin
    package.__path__ = [str(root)]  # type: ignore[attr-defined]
    package.__spec__ = spec
    package.__version__ = (root / "version.txt").read_text(encoding="utf-8").strip()  # type: ignore[attr-defined]
    errors: dict[str, str] = {}
    package.get_import_errors = lambda: dict(errors)  # type: ignore[attr-defined]
    package._errors = errors  # type: ignore[attr-defined]

    def lazy(name: str) -> Any:
        if name in ("AutoModel", "AutoFrontend"):
            _import_all_of_funasr()
            module = importlib.import_module(f"funasr.auto.auto_{name[4:].lower()}")
            return getattr(module, name)
        raise AttributeError(f"module 'funasr' has no attribute {name!r}")

    package.__getattr__ = lazy  # type: ignore[attr-defined]
    sys.modules["funasr"] = package


_ALL_IMPORTED = False


def _import_all_of_funasr() -> None:
    """What funasr's own __init__ does: import every submodule, recording (not raising) errors."""
    global _ALL_IMPORTED
    if _ALL_IMPORTED:
        return
    package = sys.modules["funasr"]
    errors = getattr(package, "_errors", {})
    for info in pkgutil.walk_packages(package.__path__, "funasr."):
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # noqa: BLE001 - funasr's optional parts need packages we lack
            errors[info.name] = f"{type(exc).__name__}: {exc}"
    _ALL_IMPORTED = True


_REGISTER = re.compile(r'@tables\.register\(\s*"\w+"\s*,\s*"(\w+)"')


@functools.cache
def _registering_modules() -> dict[str, str]:
    """Registered class name -> the funasr module whose source registers it (read, not run)."""
    spec = importlib.util.find_spec("funasr")
    root = Path(spec.origin).parent  # type: ignore[union-attr, arg-type]
    where: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        if "tables.register" not in text:
            continue
        parts = path.relative_to(root).with_suffix("").parts
        module = ".".join(("funasr", *(parts[:-1] if parts[-1] == "__init__" else parts)))
        for name in _REGISTER.findall(text):
            where.setdefault(name, module)
    return where


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
    conf = read_yaml(path)
    if not isinstance(conf, dict) or conf.get("model") != model_class:
        raise ModelLoadError(f"{path} does not describe a {what} model ({model_class}).")
    return conf


def _read_cmvn(path: Path) -> np.ndarray:
    from asr.engine.frontend import load_cmvn

    try:
        return load_cmvn(path)
    except ValueError as exc:
        raise ModelLoadError(f"{path} is not a valid am.mvn file: {exc}") from exc


_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)


_skipping = threading.local()
_wrap_lock = threading.Lock()
_wrapped = False


def _wrap_init_functions() -> None:
    """Make torch.nn.init's functions do nothing on a thread inside `skip_init` (and what they
    always did everywhere else). Installed once; a per-thread flag, not a swap of the functions
    for the duration, because the punctuation model loads on another thread at the same time
    and a model built elsewhere meanwhile must still be initialised."""
    global _wrapped
    with _wrap_lock:
        if _wrapped:
            return
        for name in _INIT_FUNCTIONS:
            original = getattr(torch.nn.init, name, None)
            if original is None:
                continue

            @functools.wraps(original)
            def wrapper(tensor: torch.Tensor, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
                if getattr(_skipping, "on", False):
                    return tensor
                return _original(tensor, *args, **kwargs)

            setattr(torch.nn.init, name, wrapper)
        _wrapped = True


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Build modules on this thread with their parameters left uninitialised (every one is then
    loaded from the checkpoint, which load_model checks)."""
    _wrap_init_functions()
    before = getattr(_skipping, "on", False)
    _skipping.on = True
    try:
        yield
    finally:
        _skipping.on = before


def read_yaml(path: Path) -> Any:
    """A YAML file through libyaml's parser where PyYAML has it (the released model's config
    took ~0.1 s of a cold start in the pure-Python one)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - a safe loader


def _read_weights(path: Path, *, mapped: bool) -> Any:
    """The checkpoint's tensors. `mapped`: memory-mapped from the file rather than read into new
    memory, for weights that are copied to the GPU right after (the full model is 944 MB: one
    copy fewer in a cold start); a checkpoint in torch's legacy format cannot be mapped and is
    read. Not for weights that stay on the CPU: they would stay backed by the file."""
    try:
        if mapped:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"Could not read weights {path}: {exc}") from exc


def load_model(model_dir: Path, device: torch.device) -> LoadedModel:
    """Build the network with funasr's registry and load model.pt strictly onto `device`."""
    files = ModelFiles.from_dir(model_dir)
    config = read_yaml(files.config)
    tables = funasr_registry(config)
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
    with skip_init():
        # No time on random init that the weights replace. (Not the meta device: its ops run
        # through Python reference kernels that import torch._dynamo, ~1 s of every cold start.)
        model = model_class(**config.get("model_conf", {}), **build_args,
                            vocab_size=len(token_list), input_size=input_size)
    state = _read_weights(files.weights, mapped=device.type == "cuda")
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
