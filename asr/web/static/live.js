/*
 * live.js: the 实时识别 (live) tab. The browser's microphone streams to the server while people
 * speak; captions appear as partial text and settle into final sentences with their times.
 *
 * Loaded into the page through Gradio's `head` hook (asr/web/app.py), like batch_opt.js. It renders
 * into #live-panel and speaks the same WebSocket protocol outside clients use (FunASR runtime's,
 * docs/live.md) at /api/live: a JSON configuration, 16-bit PCM at 16 kHz in ~60 ms messages, then
 * {"is_speaking": false}. The page's session cookie authenticates the WebSocket when the service
 * has a token. Audio is captured by an AudioWorklet (a ScriptProcessor where worklets are
 * missing) in an AudioContext running at 16 kHz, so the browser resamples the microphone.
 * Transcripts are put on the page with textContent only, never as HTML.
 */
(function () {
  "use strict";

  if (window.__asrLive) return;
  window.__asrLive = true;

  const RATE = 16000;
  const SEND_SAMPLES = 960; // 60 ms per message, as FunASR's own web client sends
  const scriptSrc = document.currentScript && document.currentScript.src;
  const base = new URL(".", scriptSrc || window.location.href);

  const style = document.createElement("style");
  style.textContent = `
    #live-js { display: flex; flex-direction: column; gap: 10px; }
    #live-js .live-row { display: flex; gap: 10px; flex-wrap: wrap; align-items: center; }
    #live-js button { padding: 6px 14px; border-radius: var(--radius-lg, 8px); border: none; cursor: pointer;
      font-weight: 600; background: var(--button-secondary-background-fill, #e4e4e7);
      color: var(--button-secondary-text-color, #27272a); }
    #live-js button.primary { background: var(--button-primary-background-fill, #f97316);
      color: var(--button-primary-text-color, #fff); }
    #live-js button:disabled { opacity: 0.5; cursor: not-allowed; }
    #live-js textarea { width: 100%; min-height: 3em; }
    #live-captions { min-height: 10em; max-height: 28em; overflow: auto; padding: 10px; line-height: 1.7;
      border: 1px solid var(--border-color-primary, #ddd); border-radius: var(--radius-lg, 8px); }
    #live-captions .live-final .live-time { color: #888; font-size: 0.85em; margin-right: 8px;
      font-family: monospace; }
    #live-partial { color: #888; font-style: italic; }
    #live-status[data-state="error"] { color: #d93025; }
  `;
  document.head.appendChild(style);

  let ws = null;
  let streaming = false; // audio goes out between the configuration and {"is_speaking": false}
  let audio = null; // {ctx, stream, node, source}
  let pending = new Int16Array(0);
  const finals = []; // {start_ms, end_ms, text}

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clock(ms) {
    const s = Math.max(0, ms) / 1000;
    const m = Math.floor(s / 60);
    return `${String(m).padStart(2, "0")}:${(s - m * 60).toFixed(1).padStart(4, "0")}`;
  }

  function status(text, state) {
    const node = document.getElementById("live-status");
    if (!node) return;
    node.textContent = text;
    node.setAttribute("data-state", state);
  }

  function render() {
    const root = document.getElementById("live-panel");
    if (!root || root.querySelector("#live-js")) return;
    const panel = el("div", { id: "live-js" });
    const hot = el("textarea", { id: "live-hotwords", placeholder: "热词 Hotwords（每行一个 one per line）" });
    const itnLabel = el("label", {});
    const itn = el("input", { type: "checkbox", id: "live-itn" });
    itn.checked = true;
    itnLabel.append(itn, document.createTextNode(" 数字规整 ITN"));
    const row = el("div", { class: "live-row" });
    const start = el("button", { type: "button", id: "live-start", class: "primary" }, "开始 Start");
    const stop = el("button", { type: "button", id: "live-stop", disabled: "" }, "停止 Stop");
    const copy = el("button", { type: "button", id: "live-copy" }, "复制 Copy");
    const save = el("button", { type: "button", id: "live-download" }, "下载 Download (.txt)");
    row.append(start, stop, copy, save, itnLabel, el("span", { id: "live-status", "data-state": "idle" }, "未开始 idle"));
    const captions = el("div", { id: "live-captions", "data-finals": "0" });
    captions.appendChild(el("div", { id: "live-partial" }));
    panel.append(hot, row, captions);
    root.replaceChildren(panel);
  }

  function showFinal(msg) {
    const captions = document.getElementById("live-captions");
    const partial = document.getElementById("live-partial");
    partial.textContent = "";
    if (!msg.text) return;
    const sentences = msg.sentences && msg.sentences.length ? msg.sentences
      : [{ text: msg.text, start_ms: msg.start_ms || 0, end_ms: msg.end_ms || 0 }];
    for (const s of sentences) {
      finals.push({ start_ms: s.start_ms, end_ms: s.end_ms, text: s.text });
      const line = el("div", { class: "live-final", "data-start": String(s.start_ms), "data-end": String(s.end_ms) });
      line.append(el("span", { class: "live-time" }, `${clock(s.start_ms)}–${clock(s.end_ms)}`),
        el("span", { class: "live-text" }, s.text));
      captions.insertBefore(line, partial);
    }
    captions.setAttribute("data-finals", String(finals.length));
    captions.setAttribute("data-segments", String(Number(captions.getAttribute("data-segments") || 0) + 1));
    captions.scrollTop = captions.scrollHeight;
  }

  function onMessage(ev) {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    if (msg.mode === "2pass-online") {
      // segment_text (this server's extension) is the whole open segment; FunASR's own
      // clients append `text` instead.
      const partial = document.getElementById("live-partial");
      partial.textContent = msg.segment_text !== undefined ? msg.segment_text : partial.textContent + msg.text;
      const captions = document.getElementById("live-captions");
      captions.setAttribute("data-partials", String(Number(captions.getAttribute("data-partials") || 0) + 1));
    } else if (msg.mode === "2pass-offline") {
      showFinal(msg);
    }
    if (msg.is_final) {
      status("完成 done", "done");
      if (ws) ws.close(1000);
    }
  }

  function send(samples) {
    // Float32 [-1, 1] -> 16-bit PCM, sent in 60 ms messages.
    const pcm = new Int16Array(samples.length);
    for (let i = 0; i < samples.length; i++) {
      const v = Math.max(-1, Math.min(1, samples[i]));
      pcm[i] = v < 0 ? v * 0x8000 : v * 0x7fff;
    }
    const joined = new Int16Array(pending.length + pcm.length);
    joined.set(pending);
    joined.set(pcm, pending.length);
    let at = 0;
    while (joined.length - at >= SEND_SAMPLES) {
      if (streaming && ws && ws.readyState === WebSocket.OPEN) ws.send(joined.slice(at, at + SEND_SAMPLES).buffer);
      at += SEND_SAMPLES;
    }
    pending = joined.slice(at);
  }

  const WORKLET = `
    class Tap extends AudioWorkletProcessor {
      process(inputs) {
        const ch = inputs[0] && inputs[0][0];
        if (ch) this.port.postMessage(ch.slice(0));
        return true;
      }
    }
    registerProcessor("asr-live-tap", Tap);`;

  async function openAudio() {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
    const ctx = new AudioContext({ sampleRate: RATE });
    const source = ctx.createMediaStreamSource(stream);
    let node;
    if (ctx.audioWorklet) {
      const url = URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" }));
      await ctx.audioWorklet.addModule(url);
      node = new AudioWorkletNode(ctx, "asr-live-tap");
      node.port.onmessage = (ev) => send(ev.data);
    } else {
      node = ctx.createScriptProcessor(4096, 1, 1);
      node.onaudioprocess = (ev) => send(ev.inputBuffer.getChannelData(0));
    }
    source.connect(node);
    // A worklet needs no output; a ScriptProcessor only runs while connected to one (silent).
    const mute = ctx.createGain();
    mute.gain.value = 0;
    node.connect(mute).connect(ctx.destination);
    return { ctx, stream, node, source };
  }

  function closeAudio() {
    streaming = false; // buffers the recorder still delivers are not sent after the end
    if (!audio) return;
    if (audio.node.port) audio.node.port.onmessage = null;
    audio.stream.getTracks().forEach((t) => t.stop());
    audio.source.disconnect();
    audio.node.disconnect();
    audio.ctx.close();
    audio = null;
  }

  function hotwords() {
    const text = (document.getElementById("live-hotwords") || {}).value || "";
    const words = text.split(/[\s,，;；、]+/).filter(Boolean);
    if (!words.length) return "";
    const weighted = {};
    for (const w of words) weighted[w] = 20; // FunASR's form; SeACo uses the words, not the weights
    return JSON.stringify(weighted);
  }

  async function start() {
    document.getElementById("live-start").disabled = true;
    status("连接中 connecting…", "connecting");
    pending = new Int16Array(0);
    try {
      audio = await openAudio();
    } catch (e) {
      status("无法使用麦克风 microphone unavailable: " + e.message, "error");
      document.getElementById("live-start").disabled = false;
      return;
    }
    const url = new URL("api/live", base);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(url.toString());
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      ws.send(JSON.stringify({
        mode: "2pass", wav_name: "microphone", wav_format: "pcm", audio_fs: audio.ctx.sampleRate,
        is_speaking: true, chunk_size: [5, 10, 5], chunk_interval: 10,
        itn: document.getElementById("live-itn").checked, hotwords: hotwords(),
      }));
      streaming = true;
      status("正在聆听 listening…", "listening");
      document.getElementById("live-stop").disabled = false;
    };
    ws.onmessage = onMessage;
    ws.onclose = (ev) => {
      closeAudio();
      ws = null;
      document.getElementById("live-start").disabled = false;
      document.getElementById("live-stop").disabled = true;
      if (ev.code !== 1000 && ev.code !== 1005) status(`连接已关闭 closed (${ev.code}) ${ev.reason}`, "error");
    };
  }

  function stop() {
    document.getElementById("live-stop").disabled = true;
    closeAudio();
    if (ws && ws.readyState === WebSocket.OPEN) {
      status("等待最终结果 finishing…", "finishing");
      ws.send(JSON.stringify({ is_speaking: false }));
    }
  }

  function transcript() {
    return finals.map((f) => `[${clock(f.start_ms)} --> ${clock(f.end_ms)}] ${f.text}`).join("\n") + "\n";
  }

  document.addEventListener("click", (ev) => {
    const t = ev.target;
    if (!t || !t.id) return;
    if (t.id === "live-start") start();
    else if (t.id === "live-stop") stop();
    else if (t.id === "live-copy") navigator.clipboard.writeText(finals.map((f) => f.text).join("\n"));
    else if (t.id === "live-download") {
      const a = el("a", { download: "live-transcript.txt" });
      a.href = URL.createObjectURL(new Blob([transcript()], { type: "text/plain;charset=utf-8" }));
      document.body.appendChild(a);
      a.click();
      a.remove();
    }
  });

  new MutationObserver(render).observe(document.documentElement, { childList: true, subtree: true });
  render();
})();
