"""Chinese for the errors users see: the UI is bilingual, so every refusal reads 中文 first, then
the English sentence the error carries (which names the limit or setting).

Keyed by the error's machine code (asr.errors); a code without an entry shows English only.
"""

from __future__ import annotations

ZH: dict[str, str] = {
    # The input audio
    "invalid_audio": "无法读取该音频。",
    "empty_file": "文件是空的。",
    "empty_audio": "音频中没有声音数据。",
    "corrupt_audio": "音频数据已损坏，无法解码。",
    "bad_header": "音频文件头无效（采样率或长度不受支持）。",
    "non_finite_audio": "音频中含有无效的采样值（NaN 或无穷大）。",
    "file_not_found": "找不到该音频文件。",
    "unsupported_format": "不是可识别的音频格式。",
    "no_audio_stream": "文件中没有音频。",
    # What a request asks for
    "invalid_hotwords": "热词不符合要求（数量或长度超出限制）。",
    "too_many_hotword_sets": "热词组数量已达上限。",
    "unknown_hotword_set": "找不到请求中指定的热词组。",
    "invalid_options": "选项无效。",
    "invalid_vad_options": "语音分段（VAD）选项无效。",
    "invalid_punc_options": "标点选项无效。",
    "invalid_speaker_options": "说话人选项无效。",
    "invalid_request": "请求无效。",
    "url_refused": "不接受网址作为文件：请上传文件本身。",
    # Limits and capacity
    "limit_exceeded": "超出了服务的限制（大小或数量）。",
    "audio_too_long": "音频时长超出了限制。",
    "no_files": "请至少选择一个文件。",
    "queue_full": "服务繁忙，请稍后重试。",
    "busy": "服务繁忙，请稍后重试。",
    "out_of_memory": "显存不足：请稍后重试，或使用较短的文件。",
    "request_timeout": "识别超时：服务繁忙或文件过长，请稍后重试，或改用批量处理。",
    # Live recognition (WebSocket)
    "invalid_live_message": "实时识别消息不符合协议（请先发送 JSON 配置，再发送音频）。",
    "invalid_live_config": "实时识别配置无效（不是 JSON，或字段值不正确）。",
    "message_too_big": "单条消息过大。",
    "live_too_fast": "音频发送速度超过实时的限制。",
    "live_idle": "连接长时间没有数据，已关闭。",
    "live_too_long": "实时识别的音频时长超出了限制。",
    "live_not_reading": "客户端没有读取识别结果，连接已关闭。",
    "too_many_connections": "实时识别连接数已满，请稍后重试。",
    # Lookups, access
    "job_not_found": "找不到该作业（可能已过期删除）。",
    "token_required": "服务对其他机器开放且未设置令牌：列出作业和修改热词集需要设置 server.api_token。",
    "hotword_set_not_found": "找不到该热词组。",
    "hotword_set_exists": "同名的热词组已存在。",
    "not_found": "找不到该地址。",
    "method_not_allowed": "不支持该请求方法。",
    "unauthorized": "需要访问令牌：请打开 /?token=你的令牌。",
    # The server's own state
    "model_load_failed": "模型无法加载。",
    "engine_error": "识别失败（服务器内部错误）。",
    "internal_error": "处理失败（服务器内部错误）。",
}


def zh(code: str | None) -> str | None:
    """The Chinese sentence for an error code, or None."""
    return ZH.get(code or "")


def bilingual(code: str | None, message: str) -> str:
    """'中文。 English.' for a typed error's code and message (English alone for unknown codes)."""
    chinese = zh(code)
    if not chinese or message.startswith(chinese):
        return message
    return f"{chinese} {message}"


__all__ = ["ZH", "bilingual", "zh"]
