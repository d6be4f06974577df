"""One settings object for the whole product, loaded from a YAML profile and ASR_* variables.

Precedence (highest first): explicit overrides passed to `load_settings`, environment variables
(`ASR_ENGINE__DTYPE=fp16`, nested with `__`), the YAML file (`--config` or `ASR_CONFIG`), defaults.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from asr.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "iic/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch"
DEFAULT_VAD_MODEL = "iic/speech_fsmn_vad_zh-cn-16k-common-pytorch"
DEFAULT_PUNC_MODEL = "iic/punc_ct-transformer_zh-cn-common-vocab272727-pytorch"
DEFAULT_SPEAKER_MODEL = "iic/speech_campplus_sv_zh-cn_16k-common"



class EngineSettings(BaseModel):
    """How the recognition engine loads and runs the model."""

    model: str = DEFAULT_MODEL
    """A local funasr model directory, or a ModelScope model id downloaded once into `model_cache`."""
    model_cache: Path = Path(os.path.expanduser("~/.cache/asr-models"))
    """Where ModelScope ids are downloaded to and looked up in."""
    device: str = "auto"
    """'auto' (first CUDA GPU, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    dtype: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    """'auto': bf16 on GPUs that support it, fp16 on older GPUs; on a CPU int8 linear layers (fp32
    activations) where their int8 products are faster than fp32: with AVX512-VNNI, AVX-VNNI or AMX
    in the CPU's flags (timed at start where no flags can be read), or, for one term (`int8_terms`),
    through oneDNN's packed product on AVX2 / AVX-512 CPUs without VNNI (weights at 64 levels a
    side there); else fp32. 'int8' forces them (elsewhere they are far slower than fp32); 'fp32' is
    the reference path."""
    int8_terms: int = Field(default=1, ge=1, le=2)  # not Literal[1, 2]: an env value is a string
    """With dtype int8: int8 terms per operand of a linear layer. 1 (one int8 product) is the fast
    path: the same CER as fp32 on the demonstration model, 86-90% of its token sequences identical
    (the rest differ where the model picks between homophones by a hair). 2 (coarse + residual,
    about 15 bits, three products) keeps 99-100% identical at about 0.6x the speed (BENCHMARKS.md, CPU,
    2026-12-02)."""
    attention: Literal["auto", "flash-attn", "varlen", "sdpa", "rowwise", "rowwise-bf16", "eager"] = "auto"
    """Attention kernel; 'auto' picks the fastest available on a GPU and, on the CPU, 'rowwise'
    (funasr's arithmetic one clip at a time, so a clip's result does not depend on its batch;
    with dtype int8 on a CPU with native bf16, 'rowwise-bf16': the same with bf16 products);
    'eager' is funasr's own code. The choice is logged."""
    frontend: Literal["auto", "torch", "funasr"] = "auto"
    """Feature extraction: 'torch' computes fbank for a whole batch on the model's device;
    'funasr' uses funasr's per-clip kaldi frontend (the reference)."""
    batch_budget_s: float = Field(default=240.0, gt=0)
    """Padded audio seconds per batch (batch size x longest clip): bounds activation memory."""
    max_batch_size: int = Field(default=128, ge=1)
    max_clip_s: float = Field(default=60.0, gt=1)
    """Clips longer than this are cut at their quietest points and stitched back together, so no
    input length can exhaust memory (attention grows with the square of the clip length)."""
    hotword_cache_size: int = Field(default=256, ge=0)
    """Distinct hotword lists whose bias-encoder output stays cached on the device."""
    overlap_timestamps: bool = True
    """On a GPU, run the timestamp head on a side stream beside the decoder."""
    cuda_graphs: bool = True
    """On a GPU, replay the encoder and decoder as CUDA graphs (one per padded batch shape,
    captured when a shape is asked for a second time: 40-660 ms on an H100) instead of launching
    their ~1,500 kernels one by one from Python. Shapes that do not come back run eagerly."""
    cuda_graph_cache: int = Field(default=64, ge=1)
    """Graphs kept per network; when full, a shape replaces the least recently used graph only if
    it was asked for more often than that graph was replayed. Each holds its padded inputs and
    outputs on the GPU (about 70 MB for a 40 x 30 s batch); a service whose batch shapes vary
    more than this recaptures often (see the INFO log lines 'graph captured')."""
    lstm_kernel: Literal["auto", "fused", "cudnn"] = "auto"
    """The timestamp head's BLSTM: 'fused' is one persistent Triton kernel (CUDA, fp16/bf16);
    'cudnn' is torch's LSTM; 'auto' uses the fused kernel where it can run and, on the int8 CPU
    path of CPUs without native bf16, the project's C kernel (fp16 recurrent weights, int8 input
    products)."""
    warmup: bool = True
    """Run the shapes that will be used once at start so the first request is not slow."""
    num_threads: int | None = None
    """CPU threads for torch; None keeps torch's default."""
    gil_switch_ms: float = Field(default=0.5, gt=0, le=5)
    """On a GPU box, Python's thread switch interval in the CLI and the server. Every PyTorch call
    gives up the GIL, and taking it back waits up to this long for a thread running Python (the
    event loop, result assembly): an eager batch of a few thousand calls pays it a few thousand
    times (BENCHMARKS.md). Shorter gives the GPU thread more turns and Python threads fewer."""

    process: Literal["auto", "on", "off"] = "auto"
    """Run the engine in a process of its own ('auto': on a GPU, in the CLI and the server). Every
    PyTorch call gives the GIL up and waits to take it back; in the service's process the event
    loop and result assembly hold it much of the time (an engine batch measured ~10x slower under
    load than alone on an H200). The child loads the same model; audio reaches it through shared
    memory, and a child that dies is started again (asr/engine/process.py)."""

    cpu_processes: int = Field(default=0, ge=0)
    """On a CPU, engines run side by side, each in its own process with its share of the usable
    cores as torch threads; a call's clips are split among them (asr/engine/pool.py). One engine's
    small CPU batches keep few of 16 threads busy. 0: one below 8 cores, one per 4 cores from 8;
    1: one engine (in this process unless `process: on`)."""

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return _device_name(value)


def _device_name(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")


class LongformSettings(BaseModel):
    """Long recordings: VAD segmentation, punctuation, sentence timestamps and speakers.

    Extra models (FSMN-VAD, punctuation, CAM++) are ModelScope ids resolved like the ASR model
    (from `engine.model_cache`), or local directories. They load on first use.
    """

    vad: Literal["silero", "fsmn"] = "silero"
    """'silero' needs no download (its weights ship in the silero-vad package); 'fsmn' is
    FunASR's FSMN-VAD from `vad_model`."""
    vad_model: str = DEFAULT_VAD_MODEL
    """FSMN-VAD model directory or ModelScope id (used when `vad` is 'fsmn')."""
    vad_workers: int = Field(default=0, ge=0)
    """Threads deciding a long recording's Silero blocks at once (the segments are the same for
    any number); 0 picks half the cores the process may use, at most 8."""
    vad_device: str = "auto"
    """Where Silero decides: 'cpu' (onnxruntime, `vad_workers` threads), 'cuda' / 'cuda:N' (its
    network in PyTorch, all frames of a block or of every live connection batched on the GPU),
    or 'auto': the GPU when there is one. The FSMN VAD always runs on the CPU."""
    auto_vad_s: float = Field(default=45.0, ge=0)
    """With VAD on 'auto', recordings longer than this take the long path (VAD segments,
    sentences); shorter ones are one engine clip."""
    max_segment_s: float = Field(default=20.0, ge=1)
    """Longest VAD segment handed to the engine."""
    min_segment_s: float = Field(default=0.0, ge=0)
    """A VAD segment shorter than this is merged with the next one across any pause (while the
    result stays under `max_segment_s`). Off by default: sentences recognised apart are
    recognised better than several run together across their pauses (the demonstration model:
    21.4% CER on a 10-minute recording apart, 31.1% with 4 s here; funasr's own pipeline does not
    merge either). A value saves per-segment work (about 10-20% of the CPU path's time there)."""
    merge_gap_s: float = Field(default=0.5, ge=0)
    """Neighbouring speech regions whose pause is at most this long are merged (under the cap): a
    pause inside a sentence, not between sentences (1.0 s merged sentences and cost the same
    recording 5 points of CER)."""
    group_s: float = Field(default=600.0, gt=0)
    """Streaming window: seconds of decoded audio one recording may have in flight (segments
    waiting for or in the engine). Large enough to fill the engine's batches from one file;
    bounds a long recording's memory (64 kB per second)."""
    punc_model: str | None = DEFAULT_PUNC_MODEL
    """CT-Transformer punctuation model directory or ModelScope id; empty/None turns it off.
    When it cannot be loaded, results say punctuation is unavailable (no failure)."""
    punc_device: str = "auto"
    """Device of the punctuation model ('cpu', 'cuda', 'cuda:N', or 'auto': the GPU when there is
    one, as for the VAD); it runs once per file, batched over all of its sentences and over the
    files finishing together. On the CPU the released model's forward cost ~2 s of an hour-long
    recording's wall on an H200 box (py-spy), more than its recognition."""
    punc_in_engine: bool = False
    """Where several pipeline processes share one batching process (`server.http_workers` > 1,
    the command line's file workers), run the punctuation network once, for all of them, in the
    engine's process (its GPU context, next to the recogniser; in the batching process when the
    engine runs there), instead of a copy of the model and a GPU context in every worker. The
    words' side (tokens, windows, marks) stays in each worker; the marks are the same. A
    single-process service or command whose engine runs in a process of its own (a GPU's
    default) runs the network there too, so its own process needs no GPU context. Off by default
    until measured on a GPU box (BENCHMARKS.md)."""
    vad_in_engine: bool = False
    """The same for Silero's network on recordings (`vad: silero`): each worker cuts its
    recordings' blocks and reads the decisions, the network runs in the engine's process, as
    PyTorch on `vad_device` ('auto': the engine's device). Live captions' VAD (a call every
    tick) stays in the worker. Off by default until measured on a GPU box."""
    speaker_model: str = DEFAULT_SPEAKER_MODEL
    """CAM++ speaker-embedding model directory or ModelScope id (speakers are off by default)."""
    speaker_device: str = "cpu"
    max_speakers: int = Field(default=8, ge=1)
    """Most speakers found when the number is not given."""
    speaker_threshold: float = Field(default=0.5, gt=0, lt=2)
    """Cosine distance above which two groups of speech are different speakers (when the
    number of speakers is estimated)."""

    @field_validator("vad_device")
    @classmethod
    def _check_vad_device(cls, value: str) -> str:
        return _device_name(value)


class LimitSettings(BaseModel):
    """Limits on what one request may ask for (docs/limits-and-security.md)."""

    max_upload_mb: float = Field(default=512.0, gt=0)
    """Largest single audio file. Request bodies of single-file routes are cut off (413) as soon
    as they pass this size, before they are read any further."""
    max_job_mb: float = Field(default=4096.0, gt=0)
    """Largest batch job (all its files together), and the body limit of the batch and UI upload
    routes. Batch uploads stream to disk, so this bounds disk use, not memory."""
    job_inflight_mb: float = Field(default=1024.0, gt=0)
    """Stored size of the batch-job files being decoded and transcribed at once (at least one
    always runs). Bounds the job worker's memory: compressed formats decode to about 10x their
    size (64 kB per second of audio)."""
    max_audio_s: float = Field(default=4 * 3600.0, gt=0)
    """Longest accepted recording. A decoded second takes 64 kB of memory (float32, 16 kHz)."""
    max_files_per_job: int = Field(default=1000, ge=1)
    max_hotwords: int = Field(default=1000, ge=0)
    max_hotword_chars: int = Field(default=32, ge=1)
    """Longest single hotword, in characters (also each side of a correction)."""
    max_hotword_sets: int = Field(default=100, ge=0)
    """Named hotword sets the service keeps (`/api/hotword_sets`)."""
    max_set_words: int = Field(default=1000, ge=0)
    """Words in one hotword set."""
    max_set_corrections: int = Field(default=1000, ge=0)
    """Correction-dictionary entries (错词 -> 正词) in one hotword set."""
    max_split_channels: int = Field(default=8, ge=1)
    """Channels a recording may have when channels='split' asks for each to be recognised on its
    own (each channel costs as much as a recording)."""
    max_queue: int = Field(default=512, ge=1)
    """Items waiting for the GPU before new requests get 503 + Retry-After."""
    decoded_audio_mb: float = Field(default=2048.0, gt=0)
    """Decoded audio (float32 at 16 kHz: 64 kB per second) that all transcriptions together may
    hold in memory. A request reserves its length (from the header) or, for long and unknown
    lengths, the streaming window (`longform.group_s`); recordings of any length are decoded as a
    stream, so the reservation bounds its memory. A request that finds no room waits (batch
    jobs, the CLI) or, after `budget_wait_s`, gets 503 with Retry-After."""
    budget_wait_s: float = Field(default=30.0, ge=0)
    """How long a synchronous request waits for room in `decoded_audio_mb` before 503."""
    request_timeout_s: float = Field(default=600.0, gt=0)
    """Longest a synchronous transcription (decode + queue + engine) may take before the client
    gets 504. Batch-job files have no timeout: they wait for their turn."""
    max_zip_files: int = Field(default=1000, ge=1)
    """Files (across all jobs named) in one zip download (`/api/jobs/{id}/download`,
    `/api/jobs_zip`, the batch tab's 全部下载). Keep it at least `max_files_per_job`, or a whole
    job cannot be downloaded at once. A job id named twice is refused whatever this says."""
    max_zip_mb: float = Field(default=1024.0, gt=0)
    """Stored results (their JSON, as kept in SQLite) of all files in one zip download. The zip's
    txt + srt + json entries are about 1.5-2.5x that before compression. Zips are written on a
    worker thread and streamed, so this bounds the time and bandwidth one download takes, not
    memory."""

    @model_validator(mode="after")
    def _whole_jobs_fit_a_zip(self) -> LimitSettings:
        if self.max_zip_files < self.max_files_per_job:
            raise ValueError(
                f"limits.max_zip_files ({self.max_zip_files}) is below limits.max_files_per_job "
                f"({self.max_files_per_job}): a full job could not be downloaded"
            )
        return self


class LiveSettings(BaseModel):
    """Live recognition over WebSocket (FunASR runtime's protocol, docs/live.md): limits per
    connection and how often partial text is recognised."""

    enabled: bool = True
    """Serve the WebSocket endpoint (`/api/live`, and `/` for FunASR's own clients)."""
    max_connections: int = Field(default=1000, ge=1)
    """Open live connections; one more is closed at once with 1013 (try again later)."""
    max_message_kb: float = Field(default=1024.0, gt=0)
    """Largest single WebSocket message (a block of audio or the JSON configuration); larger
    ones close the connection with 1009. FunASR's clients send 60-600 ms of audio per message."""
    max_speed: float = Field(default=4.0, ge=1)
    """Live audio may arrive at most this many times faster than real time (after `burst_s`),
    or the connection is closed with 1008: live captions are for audio as it is spoken; files
    go to the HTTP API or the `offline` mode."""
    burst_s: float = Field(default=30.0, ge=0)
    """Seconds of audio a live connection may send ahead of that pace (a client's buffer
    after a network stall, a short file replayed fast)."""
    idle_timeout_s: float = Field(default=30.0, gt=0)
    """A connection that sends nothing for this long is closed with 1008."""
    max_session_s: float = Field(default=4 * 3600.0, gt=0)
    """Longest audio one connection may send (live or offline), in seconds; then 1008."""
    ping_interval_s: float = Field(default=20.0, gt=0)
    """The server pings every live connection this often (uvicorn's WebSocket keepalive) ..."""
    ping_timeout_s: float = Field(default=20.0, gt=0)
    """... and closes one whose pong does not come within this (1011 'keepalive ping timeout'):
    a client that stopped reading its socket, or vanished without closing."""
    send_timeout_s: float = Field(default=10.0, gt=0)
    """A client that reads no result for this long while results wait (it stopped reading) is
    closed with 1008; partial text waiting for it is dropped first, final text never."""
    partial_interval_ms: float = Field(default=480.0, ge=100, le=2000)
    """How often the open segment is recognised again for partial text, unless the client's
    `chunk_size` asks for a pace between 300 and 600 ms (FunASR's [5,10,5] is 600 ms)."""
    partial_max_waiting: int | None = Field(default=None, ge=1)
    """Partial text is recognised only while fewer clips than this wait for the GPU (None: twice
    `engine.max_batch_size`, two full batches); under load partials are skipped (the next one,
    or the final, follows), finals never are."""
    tick_ms: float = Field(default=64.0, ge=10, le=500)
    """How often received audio of all connections is run through the VAD together (one batched
    Silero call per 32 ms frame across every connection)."""
    max_segment_s: float = Field(default=15.0, ge=2)
    """Longest live segment: speech without a pause is cut (at its quietest point) into finals of
    at most this length."""
    min_silence_ms: int = Field(default=300, ge=64)
    """A pause at least this long ends a live segment, whose final text then follows."""


class SubtitleSettings(BaseModel):
    """How words are grouped into sentences: the result's `sentences`, the SRT/VTT cues and the
    text's lines. A sentence ends at a sentence mark, a speaker change, a pause of `split_gap_s`,
    or where it would pass `max_chars` or `max_duration_s` (then at its last comma if it has one)."""

    max_chars: int = Field(default=24, ge=2)
    """Characters per cue (a CJK character counts 1, an ASCII letter or digit half)."""
    max_duration_s: float = Field(default=7.0, gt=0.5)
    """Longest cue on screen."""
    min_duration_s: float = Field(default=0.5, ge=0)
    """A cue is shown at least this long when the next one leaves room."""
    split_gap_s: float = Field(default=0.8, gt=0)
    """A pause this long starts a new cue even without a mark (a cue should not stay on screen
    over the pause between sentences)."""


class PipelineSettings(BaseModel):
    """The pipeline's own threads and how many files the CLI and batch jobs run at once."""

    workers: int = Field(default=8, ge=1)
    """Threads for decoding, VAD, punctuation and speaker embeddings (shared by all requests)."""
    itn: bool = True
    """Inverse text normalization by default (spoken numbers, dates, money ... written as digits:
    二零二六年十二月一日 -> 2026年12月1日); each request may turn it off or on (docs/itn.md)."""
    decode_processes: int = Field(default=-1, ge=-1)
    """Processes that decode short compressed files (mp3, m4a, ogg, ...; not WAV, which needs no
    decoding) on every core; 0 decodes in the pipeline's threads (slow beside other Python
    work: PyAV takes the GIL back for every packet), -1 picks half the cores the process may use
    (at least 1, at most 16; split among the HTTP workers) when the command line or the server
    runs, else 0. A script of your own that sets it must guard its main module
    (`if __name__ == "__main__":`): the processes are spawned and re-import it."""
    decode_process_max_mb: float = Field(default=4.0, gt=0)
    """Files at most this large are decoded whole by a decoding process and sent back as one array;
    larger ones stream back (uploads and bytes through a temporary file)."""
    decode_piece_s: float = Field(default=120.0, ge=0)
    """Seconds of audio per piece when a long mp3 on disk is decoded by several decoding
    processes at once (with the samples of one process, bit for bit); 0 decodes every recording
    in one process. Each piece decodes 1-6 s more than it keeps (its decoder's and resampler's
    history): an hour of 44.1 kHz mp3 in pieces of 30/60/120/240 s took 7.97/7.39/6.97/7.03 s of
    one core in all, against 7.89 s decoded in one go; 16 processes take 30 pieces of 120 s in two
    rounds."""
    decode_pieces_from_s: float = Field(default=600.0, ge=0)
    """Recordings at least this long (by their header) are decoded in pieces, when there are at
    least two decoding processes."""
    files_in_flight: int = Field(default=64, ge=1)
    """Files the CLI and the batch-job worker transcribe at once, so the scheduler can fill its
    batches from them (memory stays within `limits.decoded_audio_mb`)."""
    file_workers: int = Field(default=-1, ge=-1)
    """Processes that run the pipeline when the command line transcribes many files, all feeding
    the one engine through one scheduler (asr/file_workers.py); each takes `files_in_flight`
    files at once and has its share of the decoding processes. 0 or 1: the pipeline runs in the
    command's own process. -1: where the engine runs in a process of its own (a GPU), a quarter
    of the cores (2 to 4) for a command of at least 16 files or of 2 or more files totalling at
    least 32 MB, else 1 (a worker's start costs seconds, paid while the engine loads)."""


class ServerSettings(BaseModel):
    """The HTTP service and web UI."""

    host: str = "127.0.0.1"
    port: int = Field(default=7860, ge=0, le=65535)
    data_dir: Path = Path("data")
    """Uploaded batch files and the job database live here."""
    api_token: str | None = None
    """When set, every route but /healthz needs `Authorization: Bearer <token>` (browsers: open
    `/?token=<token>` once for a session cookie)."""
    session_h: float = Field(default=168.0, gt=0)
    """How long a browser's session cookie (signed, never the token itself) stays valid."""
    batch_wait_ms: float = Field(default=8.0, ge=0)
    """How long the scheduler waits for more requests to join a batch."""
    job_retention_h: float = Field(default=72.0, gt=0)
    """Finished batch jobs (results and uploads) are deleted this long after their last file
    finished."""
    jobs_db: Path | None = None
    """SQLite file holding batch jobs (WAL mode); default `<data_dir>/jobs.sqlite3`."""
    job_lease_s: float = Field(default=60.0, gt=0)
    """With several Ray Serve replicas sharing the job store (`python -m asr serve-ray`): how long
    a replica's claim on a job file lasts without being renewed (it renews every quarter of it).
    A replica that dies leaves its files to the others after this long."""
    ui: bool = True
    """Serve the web UI at /; false serves the HTTP API alone (and does not load gradio)."""
    gradio_queue: bool = True
    """Route single-file UI events through Gradio's queue. The queue never limits concurrency
    either way (every request goes to the one batching scheduler); False sends them directly."""
    share: bool = False
    """Open a public gradio.live link: exposes the service to the internet."""
    autolaunch: bool = False
    """Open the UI in a browser once the server is ready."""
    http_workers: int = Field(default=1, ge=1, le=64)
    """HTTP worker processes. 1: one process parses, decodes, batches and renders (the default).
    N > 1: N processes parse HTTP, decode audio and render results, and feed ONE batching process
    (the scheduler and the engine) over a local socket, the samples through shared memory
    (asr/web/workers.py). Needs `ui: false`: Gradio keeps a browser's session in one process."""

    @model_validator(mode="after")
    def _workers_serve_the_api(self) -> ServerSettings:
        if self.http_workers > 1 and self.ui:
            raise ValueError(
                "server.http_workers > 1 serves the HTTP API only: set server.ui: false (--no-ui). "
                "The web UI (Gradio) keeps each browser's queue and uploads in one process."
            )
        return self


class Settings(BaseSettings):
    """Everything the product can be told."""

    model_config = SettingsConfigDict(env_prefix="ASR_", env_nested_delimiter="__", extra="forbid")

    engine: EngineSettings = EngineSettings()
    limits: LimitSettings = LimitSettings()
    longform: LongformSettings = LongformSettings()
    pipeline: PipelineSettings = PipelineSettings()
    live: LiveSettings = LiveSettings()
    subtitles: SubtitleSettings = SubtitleSettings()
    server: ServerSettings = ServerSettings()
    log_level: str = "INFO"


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_values() -> dict[str, Any]:
    """What the ASR_* environment says, as a nested dict (pydantic-settings parses it)."""
    return Settings().model_dump(exclude_unset=True)


def load_settings(config_path: str | os.PathLike | None = None, **overrides: Any) -> Settings:
    """Build the settings: YAML profile < environment < `overrides` (nested dicts allowed)."""
    config_path = config_path or os.environ.get("ASR_CONFIG")
    values: dict[str, Any] = {}
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"Config file not found: {path}")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"Config file {path} must hold a mapping at the top level.")
        values = loaded
    try:
        values = _deep_merge(values, _env_values())
        values = _deep_merge(values, overrides)
        return Settings.model_validate(values)
    except ValueError as exc:
        raise ConfigError(f"Invalid settings: {exc}") from exc


# ---- hardware profiles (configs/<name>.yaml) ---------------------------------------------

# Hardware profiles ship inside the package (the repository root links to them as configs/).
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

# Known GPU names (as nvidia-smi prints them) -> profile. First match wins, so "A100" is tested
# before "A10".
_GPU_PROFILES: tuple[tuple[str, str], ...] = (
    ("H200", "h100"),
    ("H100", "h100"),
    ("H800", "h100"),
    ("A100", "a100"),
    ("A800", "a100"),
    ("A10", "a10"),
    ("4090", "rtx4090"),
    ("3060", "rtx3060"),
)


def gpu_name() -> str | None:
    """Name of the first GPU CUDA will use (honours CUDA_VISIBLE_DEVICES), or None."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return None
    if shutil.which("nvidia-smi") is None:
        return None
    cmd = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    if visible:
        cmd += ["-i", visible.split(",")[0].strip()]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.splitlines() if line.strip()]
    return names[0] if names else None


def profile_for_gpu(name: str | None) -> str:
    """Profile name for a GPU name; 'cpu' without a GPU, 'rtx4090' for an unknown one."""
    if name is None:
        return "cpu"
    upper = name.upper()
    for key, profile in _GPU_PROFILES:
        if key in upper:
            return profile
    return "rtx4090"


def resolve_config(config: str | None, configs_dir: Path = CONFIGS_DIR) -> str | None:
    """'auto' -> the profile file of the detected GPU; a bare profile name -> its file."""
    if config is None:
        return None
    if config == "auto":
        name = gpu_name()
        profile = profile_for_gpu(name)
        log.info("GPU %s -> profile %s", name or "none", profile)
        return str(configs_dir / f"{profile}.yaml")
    if not config.endswith((".yaml", ".yml")) and (configs_dir / f"{config}.yaml").is_file():
        return str(configs_dir / f"{config}.yaml")
    return config
