"""The models around the recogniser: VAD, punctuation, inverse text normalization and speaker
embeddings.

Loaded once, on first use, and shared by every request (all thread-safe). The recogniser itself
is not here: every clip goes through the same engine (and the same batching scheduler).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from asr.errors import ASRError, ITNUnavailableError, ModelLoadError
from asr.pipeline.itn import InverseNormalizer
from asr.pipeline.punc import PuncNetwork, Punctuator, SharedNetwork
from asr.pipeline.speakers import SpeakerEmbedder
from asr.pipeline.vad import VadBackend

log = logging.getLogger(__name__)


class StageModels:
    """VAD, punctuation and speaker models from `settings.longform`, loaded lazily.

    A punctuation model that cannot be loaded is reported, not raised: results then say
    punctuation was unavailable (`punctuation_unavailable()` says why, without paths).
    """

    def __init__(self, settings: Any, cache_dir: Any) -> None:
        self.settings = settings  # asr.settings.LongformSettings
        self.cache_dir = Path(cache_dir)
        self._lock = threading.Lock()
        self._vad: VadBackend | None = None
        self._punc: Punctuator | None = None
        self._punc_error: str | None = None if settings.punc_model else "no punctuation model is configured"
        self._embedder: SpeakerEmbedder | None = None
        self._itn: InverseNormalizer | None = None
        self._itn_error: str | None = None
        self._network_source: Any = None
        self._vad_source: Any = None

    def use_served_punctuation(self, source: Any) -> None:
        """Take the punctuation network from where `source()` says (called once, at the first use
        of punctuation): it returns (network, None), (None, why) when the batching process failed
        to load it, or (None, None) when it serves none (then loaded here). For a worker behind a
        batching process (`longform.punc_in_engine`)."""
        self._network_source = source

    def use_served_vad(self, source: Any) -> None:
        """As `use_served_punctuation`, for Silero's network on recordings (`longform.vad_in_engine`)."""
        self._vad_source = source

    def preload(self, itn: bool, punctuation: bool) -> threading.Thread:
        """Start loading ITN's grammars and the punctuation model on a thread, so they load while
        the engine does (half a second of a cold start one after the other). A model that fails
        is reported when the pipeline asks for it, as without this."""

        def load() -> None:
            if itn:
                self.itn()
            # A network served elsewhere is only known once the batching process answers.
            if punctuation and self.settings.punc_model and self._network_source is None:
                self.punctuator()

        thread = threading.Thread(target=load, name="asr-preload", daemon=True)
        thread.start()
        return thread

    def _resolve(self, model: str, required: tuple[str, ...], setting: str, flag: str) -> Any:
        from asr.engine.model import resolve_model_dir

        env = "ASR_LONGFORM__" + setting.upper()
        how = f"set longform.{setting} to DIR ({env}=DIR; the command line's {flag} DIR)"
        return resolve_model_dir(model, self.cache_dir, required, how_to_set=how)

    def vad(self) -> VadBackend:
        """The configured VAD backend (raises ModelLoadError when it cannot be loaded)."""
        from asr.pipeline.vad import load_vad

        with self._lock:
            if self._vad is None:
                if self.settings.vad == "fsmn":
                    path = self._resolve(self.settings.vad_model, ("config.yaml", "model.pt", "am.mvn"),
                                         "vad_model", "--vad-model")
                    self._vad = load_vad("fsmn", path)
                else:
                    network, why = (None, None) if self._vad_source is None else self._vad_source()
                    if why is not None:
                        raise ModelLoadError(f"Silero VAD is unavailable: {why}")
                    self._vad = load_vad("silero", workers=self._vad_workers(), device=self.silero_device(),
                                         network=network)
            return self._vad

    def silero_device(self) -> str | None:
        """Where Silero runs: None for onnxruntime on the CPU, else a torch device."""
        device = _device(self.settings.vad_device)
        return None if device == "cpu" else device

    def _vad_workers(self) -> int:
        from asr.runtime import usable_cores

        return self.settings.vad_workers or min(8, max(1, usable_cores() // 2))

    def punctuator(self) -> Punctuator | None:
        """The punctuation model, or None when it is not configured or cannot be loaded."""
        if self._punc is not None or self._punc_error is not None:
            return self._punc  # decided: no lock on every request's path
        with self._lock:
            if self._punc is None and self._punc_error is None:
                try:
                    network, why = (None, None) if self._network_source is None else self._network_source()
                    if why is not None:
                        self._punc_error = why
                        return None
                    required = ("config.yaml", "tokens.json") if network is not None else (
                        "config.yaml", "model.pt", "tokens.json")
                    path = self._resolve(self.settings.punc_model, required, "punc_model", "--punc-model")
                    self._punc = Punctuator(path, device=_device(self.settings.punc_device), network=network)
                except ASRError as exc:
                    # The log keeps the detail (paths included); results get the sentence below.
                    log.warning("punctuation unavailable: %s", exc)
                    self._punc_error = _UNLOADABLE
            return self._punc

    def punctuation_unavailable(self) -> str | None:
        """Why punctuation is off for everyone (None when the model is loaded or not tried yet)."""
        return self._punc_error

    def itn(self) -> InverseNormalizer | None:
        """The inverse normalizer, or None when its library is missing (`itn_unavailable()`)."""
        if self._itn is not None or self._itn_error is not None:
            return self._itn
        with self._lock:
            if self._itn is None and self._itn_error is None:
                normalizer = InverseNormalizer()
                try:
                    normalizer.load()
                except ITNUnavailableError as exc:
                    log.warning("%s", exc)
                    self._itn_error = str(exc)
                else:
                    self._itn = normalizer
            return self._itn

    def itn_unavailable(self) -> str | None:
        return self._itn_error

    def embedder(self) -> SpeakerEmbedder:
        """The CAM++ speaker model (raises ModelLoadError when it cannot be loaded)."""
        with self._lock:
            if self._embedder is None:
                path = self._resolve(self.settings.speaker_model, ("config.yaml",), "speaker_model", "--speaker-model")
                self._embedder = SpeakerEmbedder(path, device=self.settings.speaker_device)
            return self._embedder


def served_punctuation(settings: Any, engine: Any) -> tuple[Any, str | None]:
    """The punctuation network a batching process serves to its workers when
    `longform.punc_in_engine` asks for it: (network, None), (None, why) when it cannot be loaded,
    (None, None) when not asked for. In the engine's process when the engine runs in one
    (`EngineProcess.serve_punctuation`), else here. Takes seconds: call it off the event loop."""
    longform = settings.longform
    if not longform.punc_in_engine or not longform.punc_model:
        return None, None
    models = StageModels(longform, settings.engine.model_cache)
    try:
        path = models._resolve(longform.punc_model, ("config.yaml", "model.pt", "tokens.json"),
                               "punc_model", "--punc-model")
        serve = getattr(engine, "serve_punctuation", None)
        # Shared passes: the workers' files that finish together are punctuated together.
        if serve is not None:
            return SharedNetwork(serve(str(path), longform.punc_device)), None
        return SharedNetwork(PuncNetwork(path, _device(longform.punc_device))), None
    except ASRError as exc:
        log.warning("punctuation unavailable: %s", exc)
        return None, _UNLOADABLE


def served_vad(settings: Any, engine: Any) -> tuple[Any, str | None]:
    """As `served_punctuation`, for Silero's network on recordings (`longform.vad_in_engine`)."""
    longform = settings.longform
    if not longform.vad_in_engine or longform.vad != "silero":
        return None, None
    try:
        serve = getattr(engine, "serve_vad", None)
        if serve is not None:
            return serve(longform.vad_device), None
        from asr.pipeline.silero_torch import TorchSilero

        return TorchSilero(_device(longform.vad_device)), None
    except ASRError as exc:
        log.warning("VAD unavailable in the batching process: %s", exc)
        return None, f"it could not be loaded in the batching process ({exc})"


class EngineNetworks:
    """`StageModels`' sources for a pipeline that talks to its engine process directly (the
    one-process service and command on a GPU): the networks `longform.punc_in_engine` /
    `vad_in_engine` ask for run in that process, so the pipeline's own process needs no GPU
    context. `attach` before the models preload (nothing happens unless the engine will run in a
    process of its own, `wants_process`); `start(engine)` once it is loaded: the networks then
    load there at once, on a thread, while the pipeline starts."""

    def __init__(self, settings: Any, input_bytes: int | None = None) -> None:
        from asr.engine.process import wants_process

        self.settings = settings
        longform = settings.longform
        self._wanted = {
            name: load for name, load, asked in (("punc", served_punctuation, longform.punc_in_engine),
                                                 ("vad", served_vad, longform.vad_in_engine))
            if asked and wants_process(settings.engine, input_bytes)
        }  # fmt: skip
        self._loaded: dict[str, Future[tuple[Any, str | None]]] = {name: Future() for name in self._wanted}

    def attach(self, models: StageModels) -> None:
        if "punc" in self._wanted:
            models.use_served_punctuation(self._loaded["punc"].result)
        if "vad" in self._wanted:
            models.use_served_vad(self._loaded["vad"].result)

    def start(self, engine: Any) -> None:
        def load() -> None:
            for name, served in self._wanted.items():
                try:
                    self._loaded[name].set_result(served(self.settings, engine))
                except BaseException as exc:  # noqa: BLE001 - the pipeline's first use raises it
                    self._loaded[name].set_exception(exc)

        if self._wanted:
            threading.Thread(target=load, name="asr-engine-networks", daemon=True).start()


_UNLOADABLE = (
    "the punctuation model could not be loaded (the log says why); set longform.punc_model to a "
    "model directory (ASR_LONGFORM__PUNC_MODEL=DIR; the command line's --punc-model DIR)"
)


def _device(name: str) -> str:
    """'auto': the GPU when torch sees one, else the CPU."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
