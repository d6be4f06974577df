"""The Gradio UI (Chinese first, English where useful): single file, batch, live captions, system
information.

Handlers are async and only await the shared service: none holds the GPU, so Gradio's event
concurrency is unlimited and the scheduler batches requests from every user together.
Every element that scripts or tests touch has an ``elem_id``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gradio as gr

from asr.errors import ASRError
from asr.pipeline.formats import explain_html, render
from asr.pipeline.options import Options
from asr.pipeline.result import Result
from asr.service.archive import plan_archive, write_archive
from asr.service.core import Service, safe_stem, stored_result
from asr.service.jobs import JobState
from asr.web.messages import bilingual

log = logging.getLogger(__name__)

STATUS_ZH = {
    "pending": "等待 pending",
    "running": "处理中 running",
    "done": "完成 done",
    "failed": "失败 failed",
}
_DOWNLOAD_TTL_S = 3600.0

HOTWORD_NOTE = (
    "每行一个，或用空格分隔。SeACo 只接受纯词语，不支持权重（如 `词 20` 会被当作两个词）。 "
    "One per line or space separated; SeACo takes plain words, no weights."
)


class _Downloads:
    """Per-request folders for generated files, removed after an hour."""

    def __init__(self) -> None:
        self.root = Path(tempfile.gettempdir()) / "asr-ui-downloads"
        self.root.mkdir(parents=True, exist_ok=True)

    def new_dir(self) -> Path:
        now = time.time()
        for old in self.root.iterdir():
            try:
                if now - old.stat().st_mtime > _DOWNLOAD_TTL_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        return Path(tempfile.mkdtemp(dir=self.root))


def _timings_rows(result: Result) -> list[list[Any]]:
    return [[t.text, t.start_ms / 1000, t.end_ms / 1000] for t in result.tokens]


def _stats_md(result: Result) -> str:
    duration, processing = result.duration_ms / 1000, result.processing_ms / 1000
    rtf = processing / duration if duration > 0 else None
    speed = f"{duration / processing:.1f}× 实时 real time" if processing > 0 else "—"
    notes = "".join(f" · ⚠ {n.message}" for n in result.notices)
    return (
        f"**音频时长 Duration:** {duration:.2f} s · **处理时间 Processing:** "
        f"{processing:.3f} s · **实时率 RTF:** {f'{rtf:.5f}' if rtf is not None else '—'} ({speed}){notes}"
    )


def _job_rows(job: JobState) -> list[list[Any]]:
    rows = []
    for f in job.files:
        if f.status == "done" and f.result:
            detail = stored_result(f.result).text
        else:
            detail = bilingual(f.error_code, f.error or "")
        rows.append([f.index + 1, f.name, STATUS_ZH.get(f.status, f.status), detail])
    return rows


def _job_progress_md(job: JobState) -> str:
    done, failed = job.count("done"), job.count("failed")
    return (
        f"**进度 Progress:** {done + failed}/{job.total} · 完成 done {done} · 失败 failed {failed} "
        f"· 作业 job `{job.id}`"
    )


def _system_md(info: dict[str, Any], settings: Any) -> str:
    # The engine reports what it chose; the settings fill in what it does not report.
    eng = {**settings.engine.model_dump(mode="json"), **info.get("engine", {})}
    sch = info["scheduler"]
    thr = info["throughput"]
    lines = [
        "| 项目 Item | 值 Value |",
        "|---|---|",
        f"| GPU | {info.get('gpu') or eng.get('gpu') or '无 none (CPU)'} |",
        f"| 模型 Model | `{eng.get('model', '')}` |",
        f"| 设备 Device | {eng.get('device', '')} |",
        f"| 精度 Precision | {eng.get('dtype', '')} |",
        f"| 注意力 Attention backend | {eng.get('attention', '')} |",
        f"| 引擎批预算 Engine batch budget | {eng.get('batch_budget_s', '')} s padded audio |",
        f"| 调度批大小 Scheduler max batch | {sch['max_batch_size']} requests, "
        f"wait {sch['max_wait_ms']} ms |",
        f"| 队列深度 Queue depth | {sch['queue_depth']} / {sch['max_queue']} |",
        f"| 批处理文件待处理 Job files pending | {info['jobs']['files_pending']} |",
        f"| 吞吐 Throughput ({thr['window_s']:.0f} s) | {thr['x_realtime_wall']:.2f}× real time "
        f"({thr['x_realtime_engine']:.1f}× while busy), {thr['batches']} batches |",
        f"| 已处理 Processed | {sch['items_run']} clips in {sch['batches_run']} batches |",
    ]
    return "\n".join(lines)


def _user_error(exc: ASRError, action: str) -> gr.Error:
    """A typed error as the UI shows it (中文 first, then the English sentence) and one log line:
    a user's mistake is not a server fault, so no traceback (Gradio prints one by default)."""
    code = exc.code
    log.info("ui %s refused: [%s] %s", action, code, exc)
    return gr.Error(bilingual(code, str(exc)), title="错误 Error", print_exception=False)


def _uploaded(files: list[dict[str, Any]] | None) -> list[tuple[str, _LazyFile]]:
    """(name the user gave the file, its stored copy) for the batch tab's file inputs.

    The event runs without Gradio's preprocessing, so each file arrives as Gradio's file record:
    its ``path`` is in Gradio's upload folder (Gradio checked that) and ``orig_name`` is the name
    as picked; the stored copy's name has characters such as ``!`` and ``$`` removed.
    """
    out = []
    for item in files or []:
        path = Path(item["path"])
        out.append((item.get("orig_name") or path.name, _LazyFile(path)))
    return out


class _LazyFile:
    """A stored upload opened only when the job store copies it (block by block), so a large
    batch never sits in memory whole nor holds a descriptor per file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def read(self, size: int = -1) -> bytes:
        if self._fh is None:
            self._fh = self.path.open("rb")
        data: bytes = self._fh.read(size)
        if not data:
            self._fh.close()
        return data


def _write_zip(service: Service, job_id: str, path: Path) -> None:
    """The job's zip, written to ``path`` (blocking: the handler runs it on a thread)."""
    plan = plan_archive(service.jobs, [job_id], service.settings.limits)
    with path.open("wb") as fh:
        write_archive(service.jobs, plan, fh)


VAD_CHOICES = [("自动 auto", "auto"), ("开 on", "on"), ("关 off", "off")]
CHANNEL_CHOICES = [("合并 mix", "mix"), ("分开 split (双声道通话 two-channel calls)", "split")]

# Marks of the explanation box (asr.pipeline.formats.explain_html); passed to Gradio with the page.
UI_CSS = """
#single-explain .asr-explain { padding-top: 1.4em; }
.asr-explain mark { padding: 0 1px; border-radius: 3px; color: inherit; }
.asr-explain mark.asr-hit { background: rgba(34, 165, 89, 0.28); }
.asr-explain mark.asr-fix { background: rgba(59, 130, 246, 0.28); }
.asr-explain mark.asr-diff { background: rgba(249, 115, 22, 0.45); text-decoration: underline; }
.asr-explain del.asr-removed { color: #d93025; }
.asr-explain .asr-explain-legend { font-size: 0.85em; opacity: 0.8; }
.asr-explain table.asr-diff-table td, .asr-explain table.asr-diff-table th { padding: 2px 8px; }
"""


def _options(
    service: Service, hotwords: str, vad: str, punc: bool, itn: bool, speakers: bool,
    num_speakers: float | None, channels: str = "mix", channel_names: str = "",
    hotword_sets: list[str] | None = None, hotword_diff: bool = False, timestamps: bool = True,
) -> Options:
    n = int(num_speakers) if num_speakers and num_speakers >= 1 else None
    split = channels == "split"
    return service.options(hotwords=hotwords, vad=vad or "auto", punc="auto" if punc else "off",
                           itn="on" if itn else "off", speakers=bool(speakers), num_speakers=n,
                           timestamps=timestamps, hotword_sets=list(hotword_sets or []),
                           hotword_diff=bool(hotword_diff), channels="split" if split else "mix",
                           channel_names=channel_names if split else "")


def _set_names(service: Service) -> list[str]:
    return [s.name for s in service.hotword_sets.list()]


def _hotword_controls(prefix: str, service: Service) -> list[Any]:
    """Named hotword sets to use and the with/without comparison (elem_ids `{prefix}-hotword-sets`,
    `{prefix}-hotword-diff`)."""
    with gr.Row():
        sets = gr.CheckboxGroup(_set_names(service), label="热词组 Hotword sets (/api/hotword_sets)",
                                info="选中的热词组与上面的热词一起使用 Used together with the words above",
                                elem_id=f"{prefix}-hotword-sets")
        diff = gr.Checkbox(False, label="对比有无热词 Compare with and without hotwords (hotword_diff)",
                           elem_id=f"{prefix}-hotword-diff")
    return [sets, diff]


def _long_controls(prefix: str, service: Service) -> list[Any]:
    """VAD, punctuation, ITN, speaker and channel options (elem_ids `{prefix}-vad`, `-punc`, `-itn`,
    `-speakers`, `-num-speakers`, `-channels`, `-channel-names`); the defaults are the pipeline's
    (asr/pipeline/options.py)."""
    auto_s = service.settings.longform.auto_vad_s
    with gr.Accordion("选项 Options: VAD / 标点 punctuation / 数字 ITN / 说话人 speakers", open=False,
                      elem_id=f"{prefix}-long"), gr.Row():
        vad = gr.Radio(VAD_CHOICES, value="auto", label="语音分段 VAD",
                       info=f"自动：超过 {auto_s:g} 秒的音频分段识别 auto: on above {auto_s:g} s",
                       elem_id=f"{prefix}-vad")
        punc = gr.Checkbox(True, label="标点 Punctuation (模型可用时 when available)",
                           elem_id=f"{prefix}-punc")
        itn = gr.Checkbox(service.settings.pipeline.itn, label="数字规整 ITN (一百二十三 → 123)",
                          elem_id=f"{prefix}-itn")
        speakers = gr.Checkbox(False, label="说话人 Speakers", elem_id=f"{prefix}-speakers")
        num = gr.Number(0, minimum=0, maximum=32, precision=0,
                        label="人数 Number of speakers (0 = 自动 auto)",
                        elem_id=f"{prefix}-num-speakers")
    with gr.Row():
        channels = gr.Radio(CHANNEL_CHOICES, value="mix", label="声道 Channels",
                            info="分开：每个声道单独识别并标注 split: each channel recognised and labelled",
                            elem_id=f"{prefix}-channels")
        names = gr.Textbox("", label="声道名称 Channel names", placeholder="坐席,客户",
                           info="逗号分隔 comma separated (默认 default CH1, CH2)", elem_id=f"{prefix}-channel-names")
    return [vad, punc, itn, speakers, num, channels, names]


def build_ui(service: Service) -> gr.Blocks:
    """The three tabs, wired to ``service``."""
    downloads = _Downloads()
    limits = service.settings.limits
    direct = not service.settings.server.gradio_queue

    # The inputs issue #13 added (channels, channel names, hotword sets, hotword_diff) come last,
    # so callers of Gradio's API (/gradio_api/call/transcribe_single) keep their positions.
    async def transcribe_single(
        audio_path: str | None, hotwords: str, timestamps: bool, fmt: str, vad: str, punc: bool, itn: bool,
        speakers: bool, num_speakers: float | None, channels: str = "mix", channel_names: str = "",
        hotword_sets: list[str] | None = None, hotword_diff: bool = False,
    ) -> tuple[str, str, str, list[list[Any]], list[str]]:
        if not audio_path:
            raise gr.Error("请先上传或录制音频。 Please upload or record audio first.", print_exception=False)
        try:
            options = _options(service, hotwords, vad, punc, itn, speakers, num_speakers, channels, channel_names,
                               hotword_sets, hotword_diff, timestamps)
            result = await service.transcribe(Path(audio_path), options)
        except ASRError as exc:
            raise _user_error(exc, "transcribe") from None
        out = downloads.new_dir()
        stem = safe_stem(Path(audio_path).name)
        paths = []
        for ext in ("txt", "srt", "json"):
            path = out / f"{stem}.{ext}"
            path.write_text(render(result, ext), encoding="utf-8")
            paths.append(str(path))
        shown = render(result, fmt).rstrip("\n")  # a file ends with a newline; the box need not
        return shown, explain_html(result), _stats_md(result), _timings_rows(result), paths

    async def run_batch(
        files: list[dict[str, Any]] | None, folder: list[dict[str, Any]] | None, hotwords: str,
        vad: str, punc: bool, itn: bool, speakers: bool, num_speakers: float | None,
        channels: str = "mix", channel_names: str = "", hotword_sets: list[str] | None = None,
        hotword_diff: bool = False,
    ) -> AsyncIterator[tuple[str, list[list[Any]], str | None]]:
        # Without batch_opt.js (or with ?batch_opt=0) the batch tab runs here; with it, the page
        # script uploads the files to /api/batch_async itself and this is never called.
        uploads = _uploaded(files) + _uploaded(folder)
        if not uploads:
            raise gr.Error("请先选择文件或文件夹。 Please select files or a folder first.", print_exception=False)
        try:
            options = _options(service, hotwords, vad, punc, itn, speakers, num_speakers, channels, channel_names,
                               hotword_sets, hotword_diff)
            job_id = await service.create_job(uploads, options)
        except ASRError as exc:
            raise _user_error(exc, "batch") from None
        # The job runs in the background worker; this only follows its progress.
        while True:
            job = service.get_job(job_id)
            if job.status == "done":
                break
            yield _job_progress_md(job), _job_rows(job), None
            await service.job_worker.wait_for_change(1.0)
        zip_path = downloads.new_dir() / f"asr-{job_id[:8]}.zip"
        try:
            await asyncio.to_thread(_write_zip, service, job_id, zip_path)
        except ASRError as exc:  # over limits.max_zip_mb: the results stay on the page and the API
            gr.Warning(bilingual(exc.code, str(exc)))
            yield _job_progress_md(job), _job_rows(job), None
            return
        yield _job_progress_md(job), _job_rows(job), str(zip_path)

    def start_polling() -> gr.Timer:
        return gr.Timer(active=True)

    def stop_polling() -> gr.Timer:
        return gr.Timer(active=False)

    def system_info() -> tuple[str, dict[str, Any]]:
        info = service.info()
        return _system_md(info, service.settings), info

    # delete_cache: uploads and generated files in Gradio's cache are removed after an hour.
    with gr.Blocks(
        title="中文语音识别 Chinese ASR · SeACo-Paraformer",
        analytics_enabled=False,
        delete_cache=(3600, 3600),
    ) as demo:
        gr.Markdown("# 中文语音识别 Chinese speech recognition\nSeACo-Paraformer · 热词增强 hotword biasing")
        tab_switches: list[Any] = []
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("单文件识别 Single file", id="single", elem_id="tab-single") as single_tab:
                with gr.Row():
                    with gr.Column():
                        audio = gr.Audio(
                            sources=["upload", "microphone"],
                            type="filepath",
                            label="音频 Audio",
                            elem_id="single-audio",
                        )
                        single_hotwords = gr.Textbox(
                            lines=4, label="热词 Hotwords", info=HOTWORD_NOTE, elem_id="single-hotwords"
                        )
                        single_hotword_opts = _hotword_controls("single", service)
                        with gr.Row():
                            single_ts = gr.Checkbox(
                                True, label="字级时间戳 Timestamps", elem_id="single-timestamps"
                            )
                            single_fmt = gr.Radio(
                                ["txt", "srt", "vtt", "json"],
                                value="txt",
                                label="输出格式 Output format",
                                elem_id="single-format",
                            )
                        _single_long = _long_controls("single", service)
                        single_run = gr.Button("开始识别 Transcribe", variant="primary", elem_id="single-run")
                    with gr.Column():
                        single_text = gr.Textbox(label="识别结果 Result", lines=8, elem_id="single-result")
                        # Hotword hits, corrections and hotword_diff spans marked in the text
                        # (escaped HTML built by asr.pipeline.formats.explain_html).
                        single_explain = gr.HTML("", label="热词解释 What the hotwords did", show_label=True,
                                                 container=True, elem_id="single-explain")
                        single_stats = gr.Markdown(elem_id="single-stats")
                        single_files = gr.File(
                            label="下载 Downloads (txt / srt / json)",
                            file_count="multiple",
                            interactive=False,
                            elem_id="single-downloads",
                        )
                single_table = gr.Dataframe(
                    headers=["字符 Char", "开始 Start (s)", "结束 End (s)"],
                    interactive=False,
                    label="字级时间 Per-character timings",
                    elem_id="single-timings",
                )
                single_run.click(
                    transcribe_single,
                    [audio, single_hotwords, single_ts, single_fmt, *_single_long, *single_hotword_opts],
                    [single_text, single_explain, single_stats, single_table, single_files],
                    concurrency_limit=None,
                    queue=not direct,
                    api_name="transcribe_single",
                )

            with gr.Tab("批量处理 Batch", id="batch", elem_id="tab-batch") as batch_tab:
                gr.Markdown(
                    f"每个作业最多 {limits.max_files_per_job} 个文件，"
                    f"单个文件最大 {limits.max_upload_mb:g} MB。"
                    f" Up to {limits.max_files_per_job} files per job."
                )
                with gr.Row():
                    batch_files = gr.File(
                        file_count="multiple", label="选择文件 Files", elem_id="batch-files"
                    )
                    batch_folder = gr.File(
                        file_count="directory", label="或选择文件夹 Or a folder", elem_id="batch-folder"
                    )
                # batch_opt.js puts its own file picker here and hides the two inputs above, which
                # would upload every file to Gradio on selection (and the script uploads it again).
                gr.HTML("", elem_id="batch-js-picker")
                batch_hotwords = gr.Textbox(
                    lines=3, label="热词 Hotwords", info=HOTWORD_NOTE, elem_id="batch-hotwords"
                )
                batch_hotword_opts = _hotword_controls("batch", service)
                _batch_long = _long_controls("batch", service)
                batch_run = gr.Button("开始批量处理 Start batch", variant="primary", elem_id="batch-run")
                # batch_opt.js renders its progress and results here, and hides Gradio's three
                # result areas below (they serve the tab without the script).
                gr.HTML("", elem_id="batch-js-panel")
                batch_progress = gr.Markdown(elem_id="batch-progress")
                batch_table = gr.Dataframe(
                    headers=["#", "文件 File", "状态 Status", "文本 / 错误 Text / Error"],
                    interactive=False,
                    label="结果 Results",
                    elem_id="batch-table",
                )
                batch_zip = gr.File(
                    label="全部下载 Download all (zip)", interactive=False, elem_id="batch-zip"
                )
                batch_run.click(
                    run_batch,
                    [batch_files, batch_folder, batch_hotwords, *_batch_long, *batch_hotword_opts],
                    [batch_progress, batch_table, batch_zip],
                    concurrency_limit=None,
                    api_name="run_batch",
                    # The handler gets Gradio's file records, with the names the user picked.
                    preprocess=False,
                )

            if service.settings.live.enabled:
                with gr.Tab("实时识别 Live", id="live", elem_id="tab-live") as live_tab:
                    gr.Markdown(
                        "边说边出字幕：麦克风的声音实时发送到服务器，灰色斜体是正在识别的文字，"
                        "说话停顿后定稿为带时间的句子。 Captions while you speak: grey text is "
                        "still being recognised; each pause settles it into a sentence with its times."
                    )
                    # live.js renders its controls and the captions here (WebSocket /api/live).
                    gr.HTML("", elem_id="live-panel")
                tab_switches.append(live_tab)

            with gr.Tab("系统信息 System", id="system", elem_id="tab-system") as system_tab:
                sys_md = gr.Markdown(elem_id="sys-summary")
                sys_json = gr.JSON(label="详细 Details", elem_id="sys-json")
                sys_refresh = gr.Button("刷新 Refresh", elem_id="sys-refresh")
                # Polls only while this tab is showing: started when it is selected, stopped when
                # another tab is (every open page used to poll every 2 s whatever it showed).
                sys_timer = gr.Timer(2.0, active=False)
                for trigger in (sys_refresh.click, sys_timer.tick, system_tab.select):
                    trigger(
                        system_info,
                        None,
                        [sys_md, sys_json],
                        concurrency_limit=None,
                        show_progress="hidden",
                        queue=False,
                    )
        stops = [(tab, stop_polling) for tab in (single_tab, batch_tab, *tab_switches)]
        for tab, switch in ((system_tab, start_polling), *stops):
            tab.select(switch, None, sys_timer, queue=False, show_progress="hidden", concurrency_limit=None)

        def current_sets() -> tuple[Any, Any]:
            names = _set_names(service)
            return gr.CheckboxGroup(choices=names), gr.CheckboxGroup(choices=names)

        # The sets are the server's (created through the API): listed afresh whenever a page opens
        # and whenever a tab is picked.
        set_boxes = [single_hotword_opts[0], batch_hotword_opts[0]]
        for trigger in (demo.load, single_tab.select, batch_tab.select):
            trigger(current_sets, None, set_boxes, queue=False, show_progress="hidden", concurrency_limit=None)
    return demo


__all__ = ["build_ui"]
