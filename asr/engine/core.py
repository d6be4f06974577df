"""The batched recognition engine.

One loaded model serves any number of inputs from any number of threads. Inputs are sorted by
length and packed into batches under a padded-audio budget; each batch runs frontend, encoder,
CIF predictor, decoder and (for items that have hotwords) the SeACo bias path once. Items in one
batch may carry different hotword lists: each row attends only to its own list, so hotwords never
force batch size 1 and each result equals that item decoded alone with its own list.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from asr.engine import graphs, lstm_cpu, qkernel
from asr.engine import lstm as lstm_kernels
from asr.engine.attention import cpu_bf16_native, patch_attention
from asr.engine.batching import Batch, check_audio, per_item_hotwords, plan, split_long
from asr.engine.cif import TimestampInputs, predict_timestamps, predict_tokens
from asr.engine.frontend import BatchFrontend, FrontendOptions
from asr.engine.graphs import GraphedModel
from asr.engine.int8 import build_row_rungs, int8_available, int8_runs_fast, packed_product_usable, quantize_linears
from asr.engine.model import LoadedModel, default_device, load_model, resolve_model_dir
from asr.engine.results import ResultReader, Transcript, stitch
from asr.pipeline.audio import SAMPLE_RATE
from asr.pipeline.hotwords import HotwordList, HotwordTokenizer
from asr.runtime import release_free_memory
from asr.settings import EngineSettings

log = logging.getLogger(__name__)

# kaldi fbank needs one 25 ms window; shorter clips cannot hold a syllable and yield no text.
MIN_SAMPLES = 400
# SeACo's adaptive filter: with more hotwords than this, only the most relevant are attended to.
ASF_KEEP = 50
# On a CPU a clip joins a batch only while padding stays under this share of the batch's padded
# audio: there padded frames cost arithmetic in every linear layer (three clips of 20-30 s, one
# batch of two with 16% padding: 54.8x real time; each alone 57.7x, on 2 cores).
_CPU_MAX_PADDING = 0.1
_OVERLAP_MIN_BATCH = 8  # smaller batches run the timestamp head inline (see _start_timestamps)


def _stage(name: str) -> contextlib.AbstractContextManager[Any]:
    """A named range in torch.profiler traces (python -m asr bench --profile-dir)."""
    return torch.profiler.record_function(f"asr.{name}")


def _choose_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The dtype activations run in (int8 quantizes the weights of linear layers; activations stay fp32)."""
    if setting in ("fp32", "int8") or (setting == "auto" and device.type != "cuda"):
        return torch.float32
    if setting == "bf16" or (setting == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _wants_int8(setting: str, device: torch.device, terms: int = 1) -> bool:
    if setting == "int8" and device.type != "cpu":
        raise ValueError("dtype 'int8' runs on the CPU; on a GPU use bf16 or fp16")
    # 'auto' takes int8 only where its layers of `terms` terms run faster than fp32; elsewhere fp32.
    return setting == "int8" or (setting == "auto" and device.type == "cpu" and int8_runs_fast(terms))


def _quantize_int8(model: torch.nn.Module, terms: int) -> None:
    """The encoder's and decoder's linear layers with int8 weights and per-row int8 activations
    (`asr.engine.int8`). They hold almost all of the network's arithmetic. The CIF predictor (it
    decides token counts) and the hotword bias path stay fp32; the timestamp head's BLSTM (it
    places tokens) runs in bf16 where the CPU has it natively, else in `asr.engine.lstm_cpu`'s
    kernel with int8 input products. `terms`: `EngineSettings.int8_terms`."""
    if not int8_available():
        raise ValueError("dtype 'int8' needs torch's CPU int8 product (torch._int_mm); use fp32")
    for name in ("encoder", "decoder"):
        part = getattr(model, name, None)
        if part is not None:
            quantize_linears(part, terms)
    if terms == 1 and packed_product_usable() and qkernel.available():  # built (once a machine) now, not in a request
        log.info("int8: activations quantised by the C kernel")


def _flatten_rnns(model: torch.nn.Module) -> None:
    """cuDNN wants an RNN's weights in one block; after a move or a cast they are not, and every
    call would copy them together again (torch warns once: 'not part of single contiguous chunk')."""
    for module in model.modules():
        if isinstance(module, torch.nn.RNNBase):
            module.flatten_parameters()


class Engine:
    """SeACo-Paraformer inference: thread-safe, batched, with per-item hotwords."""

    def __init__(self, loaded: LoadedModel, settings: EngineSettings, device: torch.device) -> None:
        self.settings = settings
        self.device = device
        self.loaded = loaded
        self.model = loaded.model
        self.dtype = _choose_dtype(settings.dtype, device)
        if self.dtype == torch.bfloat16:
            # bf16 has fp32's range: cast the weights once (autocast would re-cast every matmul's
            # weights on every call). The CIF weights decide token counts, so they stay fp32; the
            # timestamp head (upsampling BLSTM, a sequential kernel) runs in bf16.
            self.model.to(torch.bfloat16)
            predictor = self.model.predictor
            predictor.cif_conv1d.float()
            predictor.cif_output.float()
            _match_input_dtypes(self.model)
        else:
            # fp16 runs under autocast on fp32 weights, so an item that overflows can be redone in fp32.
            self.model.float()
        self.quantized = _wants_int8(settings.dtype, device, settings.int8_terms)
        # The int8 path's fp32 remainder in bf16 where the CPU multiplies bf16 natively: the
        # attention products (rowwise-bf16) and the timestamp BLSTM (224 -> 118 ms for three 30 s
        # clips on 2 cores), as the GPU path runs them.
        self.cpu_bf16 = self.quantized and cpu_bf16_native()
        if self.quantized:
            if not int8_runs_fast(settings.int8_terms):
                log.warning("dtype int8 with int8_terms %d on a CPU without a fast int8 product for it (no "
                            "AVX512-VNNI, AVX-VNNI or AMX; two terms need one): its products run as exact fp32 "
                            "blocks, slower than fp32 itself; dtype auto or fp32 is faster here",
                            settings.int8_terms)
            _quantize_int8(self.model, settings.int8_terms)
            blstm = getattr(self.model.predictor, "blstm", None)
            if self.cpu_bf16 and blstm is not None:
                blstm.to(torch.bfloat16)
        _flatten_rnns(self.model)
        release_free_memory()  # the checkpoint and the weights int8 replaced: gone from the RSS too
        self.token_list = loaded.token_list
        self._sos = int(getattr(self.model, "sos", 1))
        self._eos = int(getattr(self.model, "eos", 2))
        self._blank = int(getattr(self.model, "blank_id", 0))
        self._no_bias = int(getattr(self.model, "NO_BIAS", -1))
        self.hotword_tokenizer = HotwordTokenizer(self.token_list, loaded.seg_dict, self._sos)
        self._gpu_lock = threading.Lock()
        cuda = device.type == "cuda"
        self._results = ResultReader(self.token_list, self._sos, self._eos, self._blank, device)
        self._cache_lock = threading.Lock()
        self._bias_cache: OrderedDict[HotwordList, torch.Tensor] = OrderedDict()
        overlap = cuda and settings.overlap_timestamps
        self._side_stream = torch.cuda.Stream(device) if overlap else None
        self._side_pool = ThreadPoolExecutor(1, thread_name_prefix="asr-timestamps") if overlap else None
        self._batch_pool = ThreadPoolExecutor(2, thread_name_prefix="asr-batches") if cuda else None
        self.frontend_kind = "funasr" if settings.frontend == "funasr" else "torch"
        self._frontend = self._build_frontend()
        self.attention_backend = patch_attention(self.model, self._attention_choice())
        self.lstm_kernel = self._choose_lstm_kernel()
        self._graphs = self._build_graphs()
        log.info("engine: device=%s dtype=%s attention=%s frontend=%s timestamp-lstm=%s cuda-graphs=%s model=%s",
                 device, self.dtype, self.attention_backend, self.frontend_kind, self.lstm_backend,
                 self._graphs is not None, loaded.files.root)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_settings(cls, settings: EngineSettings) -> Engine:
        """Resolve, load and (optionally) warm up the model named in `settings`. Process-wide
        settings (torch threads, the GIL switch interval) are `asr.runtime.configure_process`'s."""
        device = default_device(settings.device)
        model_dir = resolve_model_dir(settings.model, settings.model_cache)
        engine = cls(load_model(model_dir, device), settings, device)
        if settings.warmup:
            engine.warmup()
        return engine

    def _attention_choice(self) -> str:
        if self.settings.attention != "auto":
            return self.settings.attention
        # On the CPU funasr's arithmetic one clip at a time ('rowwise'): batched over padded keys,
        # fused (PyTorch's CPU SDPA) or not (funasr's own), the sums depend on the batch's padded
        # length, and a clip's text changed with its companions.
        if self.device.type == "cuda":
            return "auto"
        return "rowwise-bf16" if self.cpu_bf16 else "rowwise"

    def _choose_lstm_kernel(self) -> str:
        """'fused', 'cpu-f16' or 'cudnn' for the timestamp head's BLSTM (see `asr.engine.lstm` and
        `asr.engine.lstm_cpu`)."""
        blstm = getattr(self.model.predictor, "blstm", None)
        usable = blstm is not None and lstm_kernels.fused_available(self.device, self.dtype, blstm.hidden_size)
        choice = self.settings.lstm_kernel
        if choice == "fused" and not usable:
            raise ValueError("lstm_kernel 'fused' needs Triton, a CUDA device and dtype fp16 or bf16")
        # The int8 path's BLSTM where the CPU has no native bf16: the C kernel (2x torch's LSTM for
        # one or two rows on 2 AVX2 cores, 1.2-1.3x for 4-8; no per-step barrier to stall on a
        # shared machine). The fp32 path keeps torch's, funasr's own arithmetic.
        on_int8_path = self.device.type == "cpu" and self.quantized and not self.cpu_bf16
        if choice == "auto" and on_int8_path and blstm is not None and lstm_cpu.fits(blstm) and lstm_cpu.available():
            return "cpu-f16"
        return "fused" if usable and choice != "cudnn" else "cudnn"

    @property
    def lstm_backend(self) -> str:
        """What runs the timestamp BLSTM, as logs and the UI report it: 'fused' (our Triton
        kernel), 'cpu-f16' (our C kernel, the int8 CPU path), 'cudnn' (torch's LSTM on a CUDA device)
        or 'torch' / 'torch-bf16' (torch's LSTM on the CPU, where there is no cuDNN)."""
        if self.lstm_kernel in ("fused", "cpu-f16"):
            return self.lstm_kernel
        if self.device.type == "cuda":
            return "cudnn"
        return "torch-bf16" if self.cpu_bf16 else "torch"

    def _build_graphs(self) -> GraphedModel | None:
        """Encoder and decoder as CUDA graphs where that is possible and wanted (`asr.engine.graphs`)."""
        if self.device.type != "cuda" or not self.settings.cuda_graphs:
            return None
        reason = graphs.supported(self.model.encoder, self.model.decoder)
        if self.attention_backend == "eager":
            reason = "funasr's own attention is the reference path"
        elif getattr(self.model, "normalize", None) is not None:
            reason = "the model normalises features inside encode()"
        if reason:
            log.info("encoder CUDA graphs off: %s", reason)
            return None
        return GraphedModel(self.model, self.device, self._autocast, self.settings.cuda_graph_cache)

    def _build_frontend(self) -> Any:
        conf = self.loaded.frontend_conf
        if self.frontend_kind == "torch":
            # fbank + LFR + CMVN for a whole batch on the model's device.
            return BatchFrontend(FrontendOptions.from_conf(conf), self.loaded.cmvn).to(self.device)
        from funasr.frontends.wav_frontend import WavFrontend

        conf["cmvn_file"] = str(self.loaded.files.cmvn)
        return WavFrontend(**conf)

    def info(self) -> dict[str, Any]:
        """What the engine runs with, for the UI, /healthz and logs."""
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        return {
            "model": str(self.loaded.files.root),
            "device": str(self.device),
            "gpu": gpu,
            "dtype": "int8" if self.quantized else str(self.dtype).replace("torch.", ""),
            "attention": self.attention_backend,
            "timestamp_lstm": self.lstm_backend,
            "cuda_graphs": self._graphs is not None,
            # Captures so far (each 40-600 ms of the engine's time): steady growth under load means
            # the traffic's batch shapes do not repeat (see asr.engine.graphs._GraphCache).
            "cuda_graph_captures": (
                self._graphs.encoders.captures + self._graphs.decoders.captures if self._graphs is not None else 0
            ),
            "frontend": self.frontend_kind,
            "batch_budget_s": self.settings.batch_budget_s,
            "max_batch_size": self.settings.max_batch_size,
            "max_clip_s": self.settings.max_clip_s,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }

    def warmup(self) -> None:
        """Run a short and a long clip once so kernels and allocator pools exist before traffic."""
        rng = np.random.default_rng(0)
        clips = [rng.normal(0, 0.05, int(s * SAMPLE_RATE)).astype(np.float32) for s in (1.0, 8.0)]
        start = time.perf_counter()
        if self.lstm_kernel == "fused":
            lstm_kernels.compile_all(self.model.predictor.blstm, self.dtype)
        for _ in range(2):  # a batch shape's CUDA graphs are captured on its second request
            self.transcribe(clips)
        self.transcribe(clips[:1], hotwords=["热词"])
        if self.quantized:
            self._build_int8_rungs()
        log.info("engine warm-up took %.2f s", time.perf_counter() - start)

    def _build_int8_rungs(self) -> None:
        """The packed int8 layers' primitives for every row count a batch can have: the padded
        frames of the batch budget or of one clip of max_clip_s, whichever is more (a decoder's
        token rows are fewer)."""
        opts = FrontendOptions.from_conf(self.loaded.frontend_conf)
        frame_s = opts.frame_shift / 1000 * opts.lfr_n
        longest_s = max(self.settings.batch_budget_s, self.settings.max_clip_s)
        built = build_row_rungs(self.model, int(longest_s / frame_s) + opts.lfr_n + 1)
        release_free_memory()  # the warm-up's temporaries: out of the RSS too
        log.info("int8: %d packed product shapes built", built)

    # ---------------------------------------------------------------- public API
    def transcribe(
        self,
        audios: Sequence[np.ndarray],
        hotwords: Sequence[str] | Sequence[Sequence[str]] | None = None,
    ) -> list[Transcript]:
        """Recognise each 16 kHz float32 mono array; results are aligned with `audios`.

        `hotwords` is one list for every input, or one list per input. Lists are used as given:
        call `parse_hotwords` on user text first to enforce limits.
        """
        per_item = per_item_hotwords(hotwords, len(audios))
        clips: list[np.ndarray] = []
        owners: list[tuple[int, int]] = []  # (input index, sample offset) per clip
        for i, audio in enumerate(audios):
            audio = check_audio(audio, i)
            for offset, piece in split_long(audio, self.settings.max_clip_s):
                clips.append(piece)
                owners.append((i, offset))
        clip_hotwords = [per_item[i] for i, _ in owners]
        parts = self._run_clips(clips, clip_hotwords)
        return stitch(audios, owners, parts)

    def probe(self, audios: Sequence[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        """Per clip: encoder output, predicted token count and decoder log-probabilities, on the
        CPU. For agreement checks between precisions and kernels (benchmark, tests)."""
        clips = [check_audio(a, i) for i, a in enumerate(audios)]
        out: list[dict[str, torch.Tensor]] = [{} for _ in clips]
        for batch in self._plan(clips, [()] * len(clips)):
            with torch.inference_mode(), self._gpu_lock:
                res = self._forward(*self._features(batch.audios), batch.hotwords, logits=True)
            for row, i in enumerate(batch.index):
                n, t = int(res["token_len"][row]), int(res["enc_lens"][row])
                out[i] = {"enc": res["enc"][row, :t].float().cpu(), "token_len": res["token_len"][row].cpu(),
                          "logits": res["logp"][row, :n].float().cpu()}
        return out

    def close(self) -> None:
        """Drop cached device tensors (hotword embeddings) and stop the helper thread. The engine
        is not to be used afterwards."""
        with self._cache_lock:
            self._bias_cache.clear()
        self._graphs = None  # the graphs hold their memory pool until dropped
        for pool in (self._side_pool, self._batch_pool):
            if pool is not None:
                pool.shutdown(wait=True)

    # ---------------------------------------------------------------- input handling
    def _plan(self, clips: list[np.ndarray], hotwords: list[HotwordList]) -> Iterator[Batch]:
        return plan(clips, hotwords, self.settings.batch_budget_s, self.settings.max_batch_size,
                    max_padding=_CPU_MAX_PADDING if self.device.type == "cpu" else 1.0)

    def _run_clips(self, clips: list[np.ndarray], hotwords: list[HotwordList]) -> list[Transcript]:
        results: list[Transcript | None] = [None] * len(clips)
        batches = list(self._plan(clips, hotwords))
        # Two batches in flight on a GPU: while one holds the GPU, the other pads its audio or
        # turns its results into text, so the GPU does not wait for host work between batches.
        runs = self._batch_pool.map(self._run_splitting, batches) if len(batches) > 1 and self._batch_pool \
            else map(self._run_splitting, batches)
        for batch, batch_results in zip(batches, runs, strict=True):
            for i, res in zip(batch.index, batch_results, strict=True):
                results[i] = res
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _run_splitting(self, batch: Batch) -> list[Transcript]:
        """Run a batch; on a GPU out-of-memory error, free the cache and run each half on its own
        (down to single items), so a budget set too high for a busy card costs speed, not work."""
        try:
            return self._run_batch(batch)
        except torch.OutOfMemoryError:
            if len(batch.index) == 1:
                raise
        if self.device.type == "cuda":
            # The failed batch's copy from this thread's staging buffer may still be queued.
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        half = len(batch.index) // 2
        log.warning("out of GPU memory on a batch of %d; retrying as %d + %d",
                    len(batch.index), half, len(batch.index) - half)
        return [r for part in batch.halves() for r in self._run_splitting(part)]

    # ---------------------------------------------------------------- hotword bias
    def _bias_embeddings(self, words: HotwordList) -> torch.Tensor:
        """Bias-encoder output (N+1, D) for one hotword list; computed once per distinct list."""
        with self._cache_lock:
            cached = self._bias_cache.get(words)
            if cached is not None:
                self._bias_cache.move_to_end(words)
                return cached
        ids = self.hotword_tokenizer.encode(words)
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)
        pad = torch.zeros(len(ids), int(lengths.max()), dtype=torch.int64)
        for row, x in enumerate(ids):
            pad[row, : len(x)] = torch.tensor(x)
        # funasr's own bias encoder (embedding + LSTM); it takes lengths on the CPU.
        with self._autocast():
            selected = self.model._hotword_representation(pad.to(self.device), lengths.int())
        with self._cache_lock:
            self._bias_cache[words] = selected
            while len(self._bias_cache) > self.settings.hotword_cache_size:
                self._bias_cache.popitem(last=False)
        return selected

    # ---------------------------------------------------------------- the forward pass
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype != torch.float16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _pad(self, audios: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch as one zero-padded (pinned, on a GPU box) host tensor: host work that needs
        no GPU lock."""
        longest = max(len(a) for a in audios)
        waves, lengths = self._results.staging().take(
            "in", [((len(audios), longest), torch.float32), ((len(audios),), torch.int64)], self._results.pinned
        )
        lengths.copy_(torch.tensor([len(a) for a in audios]))
        for row, a in enumerate(audios):
            waves[row, : len(a)] = torch.from_numpy(a)
            waves[row, len(a) :] = 0.0
        return waves, lengths

    def _features(self, audios: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._features_of(*self._pad(audios))

    def _features_of(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frontend_kind == "torch":
            return self._frontend(waves.to(self.device, non_blocking=True), lengths.to(self.device, non_blocking=True))
        feats, feat_lens = self._frontend(waves, lengths)
        return feats.to(self.device, non_blocking=True), feat_lens.to(self.device)

    @torch.inference_mode()
    def _run_batch(self, batch: Batch) -> list[Transcript]:
        keep = [k for k, a in enumerate(batch.audios) if len(a) >= MIN_SAMPLES]
        results = [self._empty(a) for a in batch.audios]
        if not keep:
            return results
        audios = [batch.audios[k] for k in keep]
        hotwords = [batch.hotwords[k] for k in keep]
        t0 = time.perf_counter()
        with _stage("pad"):
            waves, lengths = self._pad(audios)
        pad_s = time.perf_counter() - t0
        with _stage("gpu_lock_wait"):
            self._gpu_lock.acquire()
        try:
            t1 = time.perf_counter()
            with _stage("features"):
                feats, feat_lens = self._features_of(waves, lengths)
            t2 = time.perf_counter()
            out = self._forward(feats, feat_lens, hotwords)
            with _stage("copy_results"):
                host = self._results.copy(out)
        finally:
            self._gpu_lock.release()
        # The GPU lock is free again: the next batch's work is queued while this one's results
        # travel to the host and are turned into text.
        with _stage("results_wait"):
            host.ready()
        timings = {"frontend_s": pad_s + t2 - t1, "model_s": time.perf_counter() - t2, "batch_size": float(len(keep))}
        with _stage("text"):
            for k, res in zip(keep, self._results.decode(host, audios, timings)):
                results[k] = res
        return results

    def _forward(
        self, feats: torch.Tensor, feat_lens: torch.Tensor, hotwords: list[HotwordList], *, logits: bool = False
    ) -> dict[str, torch.Tensor]:
        """The network on one batch. Returns device tensors; decoder log-probabilities ("logp")
        only when `logits` is set (they are the largest tensor of the pass)."""
        model = self.model
        if self.dtype == torch.bfloat16:
            feats = feats.to(torch.bfloat16)
        with self._autocast(), _stage("encode"):
            enc = None
            if self._graphs is not None:
                enc = self._graphed(lambda g: g.encode(feats, feat_lens))
                enc_lens = feat_lens
            if enc is None:
                enc, enc_lens = model.encode(feats, feat_lens)
            if isinstance(enc, tuple):
                enc = enc[0]
        enc32 = enc.float()
        if self.dtype == torch.float16:
            bad = ~torch.isfinite(enc32).flatten(1).all(dim=1)
            if bool(bad.any()):
                # fp16 can overflow inside deep encoders; redo just those rows in fp32.
                rows = bad.nonzero().flatten()
                log.warning("fp16 overflow in %d item(s); re-encoding them in fp32", len(rows))
                redo, _ = model.encode(feats[rows].float(), feat_lens[rows])
                enc32[rows] = redo.float()
                enc = enc32
        # batch_invariant: padding frames must not reach any item (CIF's tail step and the
        # timestamp BLSTM would read them in funasr), so each item gets its result run alone.
        with _stage("predict_tokens"):
            embeds, token_len, ts_inputs = predict_tokens(model.predictor, enc32, enc_lens, batch_invariant=True)
        with _stage("start_timestamps"):
            timestamps = self._start_timestamps(ts_inputs, token_len)
        if embeds.shape[1] == 0:
            ids = token_len.new_zeros(enc.shape[0], 0)
            logp = enc32.new_zeros(enc.shape[0], 0, len(self.token_list)) if logits else None
        else:
            with self._autocast(), _stage("decode"):
                ids, logp = self._decode(enc, enc_lens, embeds.to(enc.dtype), token_len, hotwords, logits)
        with _stage("timestamps_wait"):
            us_alphas, us_peaks = timestamps()
        out = {
            "enc": enc32,
            "ids": ids,
            "token_len": token_len,
            "enc_lens": enc_lens,
            "us_alphas": us_alphas.float(),
            "us_peaks": us_peaks.float(),
        }
        if logp is not None:
            out["logp"] = logp
        return out

    def _graphed(self, run: Callable[[GraphedModel], Any]) -> Any:
        """run(graphs), or None (and graphs off from now on) if a capture fails."""
        assert self._graphs is not None
        try:
            return run(self._graphs)
        except graphs.CaptureError as exc:
            log.warning("%s; the engine runs without CUDA graphs from now on", exc)
            self._graphs = None
            return None

    def _start_timestamps(
        self, inputs: TimestampInputs, token_len: torch.Tensor
    ) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        """Start the timestamp head; the returned function waits for it.

        On a GPU it runs on a side stream, beside the decoder: the fused BLSTM kernel occupies
        few SMs for many sequential steps, so the decoder fills the rest of the GPU meanwhile.
        """
        predictor = self.model.predictor
        kernel = self.lstm_kernel

        def head() -> tuple[torch.Tensor, torch.Tensor]:
            with self._autocast():  # per thread: the helper thread enters it too
                return predict_timestamps(predictor, inputs, token_len, lstm_kernel=kernel)

        # cuDNN's BLSTM costs more host time than GPU time, so it is launched from a helper
        # thread; measured on an H100: +7% throughput on 1,200 s batches, but +20 ms on a lone
        # 10 s clip (the hand-off), so small batches run it inline. The fused kernel is a handful
        # of launches and goes on the side stream from this thread, for any batch.
        fused = kernel == "fused"
        threaded = not fused and len(token_len) >= _OVERLAP_MIN_BATCH
        if self._side_stream is None or not (fused or threaded):
            result = head()
            return lambda: result
        main = torch.cuda.current_stream(self.device)
        side = self._side_stream

        def run() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.inference_mode(), torch.cuda.stream(side):
                side.wait_stream(main)
                out = head()
                for tensor in (inputs.context, inputs.conv_out, inputs.mask, token_len):
                    tensor.record_stream(side)  # made on the main stream, read here
                return out

        if threaded:
            future = self._side_pool.submit(run)
            result_of = future.result
        else:
            done = run()
            result_of = lambda: done  # noqa: E731

        def wait() -> tuple[torch.Tensor, torch.Tensor]:
            us_alphas, us_peaks = result_of()
            main.wait_stream(side)
            us_alphas.record_stream(main)
            us_peaks.record_stream(main)
            return us_alphas, us_peaks

        return wait

    def _decode(
        self,
        enc: torch.Tensor,
        enc_lens: torch.Tensor,
        embeds: torch.Tensor,
        token_len: torch.Tensor,
        hotwords: list[HotwordList],
        logits: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids [B, N] (and log-probabilities [B, N, V] if `logits`). The argmax is taken on
        the raw scores: log_softmax does not change it, and skipping it saves three passes over
        the largest tensor of the batch."""
        model = self.model
        graphed = None
        if self._graphs is not None and not logits:
            graphed = self._graphed(lambda g: g.decode(enc, enc_lens, embeds, token_len))
        if graphed is not None:
            ids, dec_hidden = graphed[0].clone(), graphed[1]
            logp = None
        else:
            dec_out, dec_hidden, _ = model.decoder(
                enc, enc_lens, embeds, token_len, return_hidden=True, return_both=True
            )
            ids = dec_out.argmax(-1)
            logp = torch.log_softmax(dec_out.float(), dim=-1) if logits else None
        rows = [r for r, h in enumerate(hotwords) if h]
        if not rows or not hasattr(model, "seaco_decoder"):
            return ids, logp
        bias = [self._select_bias(hotwords[r], dec_hidden[r : r + 1], token_len[r : r + 1]) for r in rows]
        # funasr's decoder sizes its padding mask by the longest length it is given, which must
        # match the tensors' width (the whole batch's longest): a dummy last row of full length
        # keeps them equal when the rows with hotwords are all shorter (no host sync to cut them).
        sizes = [b.shape[0] for b in bias] + [1]
        n = self._to_device(sizes)
        context = torch.zeros(len(sizes), max(sizes), bias[0].shape[-1], device=enc.device, dtype=bias[0].dtype)
        for i, b in enumerate(bias):
            context[i, : b.shape[0]] = b
        idx = self._to_device(rows)
        width = embeds.shape[1]
        lens = torch.cat((token_len[idx], token_len.new_full((1,), width)))
        cif_in = torch.cat((embeds[idx], embeds.new_zeros(1, width, embeds.shape[-1])))
        dec_in = torch.cat((dec_hidden[idx], dec_hidden.new_zeros(1, width, dec_hidden.shape[-1])))
        cif_att, _ = model.seaco_decoder(context, n, cif_in, lens)
        dec_att, _ = model.seaco_decoder(context, n, dec_in, lens)
        bias_scores = model.hotword_output_layer(model._merge(cif_att[:-1], dec_att[:-1]))
        bias_ids = bias_scores.argmax(-1)
        # SeACo's merge (seaco_weight 1): where the bias head says "no bias", keep the decoder.
        no_bias = bias_ids == self._no_bias
        ids[idx] = torch.where(no_bias, ids[idx], bias_ids)
        if logp is not None:
            dha = torch.log_softmax(bias_scores.float(), dim=-1)
            logp[idx] = torch.where(no_bias.unsqueeze(-1), logp[idx], dha)
        return ids, logp

    def _to_device(self, values: list[int]) -> torch.Tensor:
        """A small int64 tensor on the device without waiting for queued GPU work (as a copy from
        pageable memory would)."""
        host = torch.tensor(values, dtype=torch.int64, pin_memory=self.device.type == "cuda")
        return host.to(self.device, non_blocking=True)

    def _select_bias(self, words: HotwordList, hidden: torch.Tensor, token_len: torch.Tensor) -> torch.Tensor:
        """The item's bias embeddings; over ASF_KEEP words, only the ones this item attends to."""
        selected = self._bias_embeddings(words)
        n = selected.shape[0]
        if n <= ASF_KEEP:
            return selected
        lens = torch.tensor([n], device=hidden.device)
        scores = self.model.seaco_decoder.forward_asf6(selected.unsqueeze(0), lens, hidden, token_len)
        scores = scores[0].sum(0).sum(0)
        keep = torch.topk(scores, min(ASF_KEEP, n - 1))[1].tolist() + [n - 1]
        return selected[keep]

    # ---------------------------------------------------------------- results
    def _empty(self, audio: np.ndarray) -> Transcript:
        return Transcript("", [], [], [], len(audio) / SAMPLE_RATE, {})

_CASTING_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.LayerNorm, torch.nn.LSTM)


def _cast_to_weight(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    x = args[0] if args else None
    dtype = next(module.parameters()).dtype
    if isinstance(x, torch.nn.utils.rnn.PackedSequence) and x.data.dtype != dtype:
        return (x._replace(data=x.data.to(dtype)), *args[1:])
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
        return (x.to(dtype), *args[1:])
    return None


def _match_input_dtypes(model: torch.nn.Module) -> None:
    """Make each layer take its input in its weights' dtype.

    funasr multiplies activations by fp32 masks, which promotes bf16 activations to fp32 before
    the next bf16 layer; casting at the layer costs one check per call, unlike autocast, which
    also re-casts weights and, on the CPU, refuses bf16 LayerNorm weights.
    """
    for module in model.modules():
        if isinstance(module, _CASTING_LAYERS) and not getattr(module, "_asr_casts_inputs", False):
            module.register_forward_pre_hook(_cast_to_weight)
            module._asr_casts_inputs = True


