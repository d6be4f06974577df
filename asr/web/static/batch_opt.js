/*
 * batch_opt.js: the Batch tab (批量处理) in the browser: pick files, upload them once, follow the jobs.
 *
 * Loaded into the page through Gradio's `head` hook (see asr/web/app.py). It replaces the tab's
 * Gradio file inputs and result areas with its own (rendered into #batch-js-picker and
 * #batch-js-panel): the chosen files stay in the browser until #batch-run is clicked, then they
 * are split into groups of GROUP_SIZE and each group is uploaded (a real multipart upload of the
 * bytes) to /api/batch_async, all groups at once; the jobs are polled at /api/jobs/{id} and the
 * results are rendered as one table, with one zip link for all of them (/api/jobs_zip).
 *
 * Files are uploaded once: Gradio's own inputs, which upload on selection, are hidden and never
 * given a file. The button is the script's alone: a click while a batch runs does nothing, so one
 * click is one job. It only uses the public HTTP API, the same one outside clients use. With
 * ?batch_opt=0 in the page URL (or without the script) the tab is Gradio's: its inputs and its
 * handler, which creates the same kind of durable job on the server.
 */
(function () {
  "use strict";

  const GROUP_SIZE = 4;
  const POLL_MS = 700;
  const STATUS_ZH = { pending: "等待 pending", running: "处理中 running", done: "完成 done", failed: "失败 failed" };
  // What a folder pick keeps (other files in the folder are skipped and counted).
  const AUDIO = /\.(wav|mp3|m4a|aac|flac|ogg|opus|webm|mp4|wma|amr|aiff?|mka)$/i;

  if (new URLSearchParams(window.location.search).get("batch_opt") === "0") return;
  if (window.__asrBatchOpt) return; // loaded twice (hot reload): keep the first
  window.__asrBatchOpt = true;

  const scriptSrc = document.currentScript && document.currentScript.src;
  const base = new URL(".", scriptSrc || window.location.href);
  const api = (path) => new URL(path, base).toString();

  // Gradio's inputs and result areas of the tab give way to the script's own.
  const style = document.createElement("style");
  style.textContent = `
    #batch-files, #batch-folder, #batch-progress, #batch-table, #batch-zip { display: none !important; }
    #batch-js-picker .batch-js-pick { display: flex; gap: 12px; flex-wrap: wrap; align-items: center;
      border: 1px dashed var(--border-color-primary, #bbb); border-radius: var(--radius-lg, 8px); padding: 14px; }
    #batch-js-picker .batch-js-pick.dragging { background: var(--background-fill-secondary, #f4f4f5); }
    #batch-js-picker label.batch-js-button input { display: none; }
    .batch-js-button { display: inline-block; padding: 6px 14px; border-radius: var(--radius-lg, 8px);
      background: var(--button-primary-background-fill, #f97316); color: var(--button-primary-text-color, #fff);
      font-weight: 600; text-decoration: none; cursor: pointer; border: none; }
    .batch-js-button.secondary { background: var(--button-secondary-background-fill, #e4e4e7);
      color: var(--button-secondary-text-color, #27272a); }
    #batch-js-list { max-height: 14em; overflow: auto; margin: 8px 0 0; padding-left: 1.2em; }
    #batch-js-list button { border: none; background: none; cursor: pointer; color: #c0392b; font-size: 1.1em; }
    #batch-run[aria-disabled="true"] { opacity: 0.55; cursor: not-allowed; }
    #batch-js-progress { display: flex; height: 12px; width: 100%; margin: 8px 0; overflow: hidden;
      border-radius: 6px; background: var(--background-fill-secondary, #e4e4e7); }
    #batch-js-progress .done { background: #22a559; }
    #batch-js-progress .failed { background: #d93025; }
    #batch-js-table { width: 100%; border-collapse: collapse; margin: 8px 0; }
    #batch-js-table th, #batch-js-table td { text-align: left; padding: 4px 8px;
      border-bottom: 1px solid var(--border-color-primary, #ddd); }
    #batch-js-table tr[data-status="failed"] { background: rgba(217, 48, 37, 0.12); }
    #batch-js-table tr[data-status="failed"] .batch-js-status { color: #d93025; font-weight: 600; }
    #batch-js-error { color: #d93025; margin: 6px 0; }
  `;
  document.head.appendChild(style);

  // The files chosen so far (file dialog, folder dialog or a drop), in order, each once.
  const selection = [];
  let skipped = 0;
  let running = false;

  const nameOf = (f) => f.webkitRelativePath || f.name;
  const keyOf = (f) => [nameOf(f), f.size, f.lastModified].join("\u0000");

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function add(files, fromFolder) {
    const known = new Set(selection.map(keyOf));
    for (const f of files) {
      if (fromFolder && !AUDIO.test(f.name)) {
        skipped += 1;
        continue;
      }
      if (!known.has(keyOf(f))) {
        known.add(keyOf(f));
        selection.push(f);
      }
    }
    renderPicker();
  }

  function mb(bytes) {
    return (bytes / 1048576).toFixed(1) + " MB";
  }

  function renderPicker() {
    const root = document.getElementById("batch-js-picker");
    if (!root) return;
    const box = el("div", { class: "batch-js-pick", id: "batch-js-drop" });
    const files = el("label", { class: "batch-js-button" }, "选择文件 Files");
    files.appendChild(el("input", { type: "file", id: "batch-js-files", multiple: "" }));
    const folder = el("label", { class: "batch-js-button secondary" }, "选择文件夹 Folder");
    folder.appendChild(el("input", { type: "file", id: "batch-js-folder", webkitdirectory: "", multiple: "" }));
    box.append(files, folder);
    const total = selection.reduce((n, f) => n + f.size, 0);
    const note = selection.length
      ? `已选择 ${selection.length} 个文件 selected (${mb(total)})`
      : "或拖放文件到这里 Or drop files here";
    box.appendChild(el("span", { id: "batch-js-count", "data-count": String(selection.length) }, note));
    if (skipped) box.appendChild(el("span", { id: "batch-js-skipped" }, `跳过 ${skipped} 个非音频文件 non-audio skipped`));
    if (selection.length) box.appendChild(el("button", { type: "button", id: "batch-js-clear", class: "batch-js-button secondary" }, "清空 Clear"));
    const list = el("ol", { id: "batch-js-list" });
    selection.forEach((f, i) => {
      const item = el("li", { "data-name": nameOf(f) });
      item.appendChild(el("span", {}, `${nameOf(f)} · ${mb(f.size)} `));
      item.appendChild(el("button", { type: "button", class: "batch-js-remove", "data-index": String(i), "aria-label": "移除 Remove " + nameOf(f) }, "×"));
      list.appendChild(item);
    });
    root.replaceChildren(box, list);
  }

  // The tab's content is rendered by Gradio after this script runs (and again if Gradio
  // re-renders it): the picker is put in place whenever its container appears empty.
  new MutationObserver(() => {
    const root = document.getElementById("batch-js-picker");
    if (root && !root.querySelector("#batch-js-drop")) renderPicker();
  }).observe(document.documentElement, { childList: true, subtree: true });

  document.addEventListener("change", (ev) => {
    const t = ev.target;
    if (t && (t.id === "batch-js-files" || t.id === "batch-js-folder") && t.files) {
      add(Array.from(t.files), t.id === "batch-js-folder");
      t.value = "";
    }
  });
  document.addEventListener("click", (ev) => {
    const t = ev.target;
    if (!t || !t.closest) return;
    const remove = t.closest(".batch-js-remove");
    if (remove && !running) {
      selection.splice(Number(remove.getAttribute("data-index")), 1);
      renderPicker();
    } else if (t.closest("#batch-js-clear") && !running) {
      selection.length = 0;
      skipped = 0;
      renderPicker();
    }
  });
  for (const type of ["dragover", "dragleave", "drop"]) {
    document.addEventListener(type, (ev) => {
      const drop = ev.target && ev.target.closest && ev.target.closest("#batch-js-drop");
      if (!drop) return;
      ev.preventDefault();
      drop.classList.toggle("dragging", type === "dragover");
      if (type === "drop" && ev.dataTransfer) add(Array.from(ev.dataTransfer.files), false);
    });
  }

  // #batch-run belongs to the script: Gradio's handler never sees a click (capture phase).
  document.addEventListener(
    "click",
    (ev) => {
      const btn = ev.target.closest && ev.target.closest("#batch-run");
      if (!btn) return;
      ev.preventDefault();
      ev.stopImmediatePropagation();
      if (running) return; // one click, one job
      if (!selection.length) {
        renderError("请先选择文件或文件夹。 Please select files or a folder first.");
        return;
      }
      runBatch(btn, selection.slice()).catch((err) => renderError(String(err)));
    },
    true
  );

  function hotwords() {
    const box = document.querySelector("#batch-hotwords textarea, #batch-hotwords input");
    return box ? box.value : "";
  }

  // The batch tab's options (long audio, hotword sets, hotword_diff, channels), sent with every
  // group as /api/batch_async form fields.
  function longOptions() {
    const opts = {};
    const vad = document.querySelector("#batch-vad input:checked");
    if (vad) opts.vad = vad.value;
    const punc = document.querySelector("#batch-punc input[type=checkbox]");
    if (punc) opts.punc = punc.checked ? "auto" : "off";
    const itn = document.querySelector("#batch-itn input[type=checkbox]");
    if (itn) opts.itn = itn.checked ? "on" : "off";
    const spk = document.querySelector("#batch-speakers input[type=checkbox]");
    if (spk) opts.speakers = spk.checked ? "true" : "false";
    const n = document.querySelector("#batch-num-speakers input");
    if (spk && spk.checked && n && Number(n.value) >= 1) opts.num_speakers = String(Math.round(Number(n.value)));
    const sets = checkedNames("#batch-hotword-sets");
    if (sets.length) opts.hotword_sets = sets.join(",");
    const diff = document.querySelector("#batch-hotword-diff input[type=checkbox]");
    if (diff) opts.hotword_diff = diff.checked ? "true" : "false";
    const channels = document.querySelector("#batch-channels input:checked");
    if (channels) opts.channels = channels.value;
    const names = document.querySelector("#batch-channel-names textarea, #batch-channel-names input");
    if (channels && channels.value === "split" && names && names.value.trim()) opts.channel_names = names.value;
    return opts;
  }

  // The names ticked in a Gradio CheckboxGroup (the input's value, or its label's text).
  function checkedNames(selector) {
    return Array.from(document.querySelectorAll(selector + " input[type=checkbox]:checked")).map((box) => {
      if (box.value && box.value !== "on") return box.value;
      const label = box.closest("label");
      return label ? label.textContent.trim() : "";
    }).filter(Boolean);
  }

  function panel() {
    return document.getElementById("batch-js-panel");
  }

  // The server's errors carry a Chinese sentence (message_zh) beside the English one.
  function bilingual(error, fallback) {
    if (!error) return fallback || "";
    const en = error.message || fallback || "";
    return error.message_zh && !en.startsWith(error.message_zh) ? error.message_zh + " " + en : en;
  }

  function renderError(message) {
    const root = panel();
    if (!root) return;
    const old = document.getElementById("batch-js-error");
    if (old) old.remove();
    root.prepend(el("div", { id: "batch-js-error", role: "alert" }, "错误 Error: " + message));
  }

  async function uploadGroup(group, words) {
    const form = new FormData();
    for (const f of group.files) form.append("files", f, nameOf(f));
    form.append("hotwords", words);
    for (const [k, v] of Object.entries(longOptions())) form.append(k, v);
    const resp = await fetch(api("api/batch_async"), { method: "POST", body: form });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      group.error = bilingual(body.error, resp.status + " " + resp.statusText);
      return;
    }
    group.jobId = body.job_id;
  }

  async function poll(group) {
    const resp = await fetch(api("api/jobs/" + encodeURIComponent(group.jobId)));
    if (!resp.ok) return;
    group.job = await resp.json();
  }

  function rows(groups) {
    const out = [];
    for (const g of groups) {
      g.files.forEach((f, i) => {
        const item = g.job && g.job.files[i];
        const status = item ? item.status : g.error ? "failed" : "pending";
        let detail = "";
        if (g.error) detail = g.error;
        else if (item && item.status === "done") detail = item.result ? item.result.text : "";
        else if (item && item.status === "failed") detail = bilingual(item.error);
        out.push({ name: nameOf(f), status, detail });
      });
    }
    return out;
  }

  function render(groups, started) {
    const root = panel();
    if (!root) return false;
    const all = rows(groups);
    const done = all.filter((r) => r.status === "done").length;
    const failed = all.filter((r) => r.status === "failed").length;
    const finished = done + failed === all.length;
    const secs = ((performance.now() - started) / 1000).toFixed(1);

    const box = el("div", { id: "batch-js-result", "data-finished": String(finished) });
    box.appendChild(
      el(
        "div",
        { id: "batch-js-summary", "data-done": String(done), "data-failed": String(failed), "data-total": String(all.length) },
        `并行上传 Parallel upload: ${groups.length} 组 groups × ≤${GROUP_SIZE} · 进度 ${done + failed}/${all.length} · ` +
          `完成 done ${done} · 失败 failed ${failed} · ${secs} s`
      )
    );
    // Done in green, failed in red, the rest still to come.
    const bar = el("div", { id: "batch-js-progress", role: "progressbar", "aria-valuemax": String(all.length), "aria-valuenow": String(done + failed) });
    const part = (cls, n) => {
      const seg = el("div", { class: cls, "data-count": String(n) });
      seg.style.width = (all.length ? (100 * n) / all.length : 0) + "%";
      return seg;
    };
    bar.append(part("done", done), part("failed", failed));
    box.appendChild(bar);

    const table = el("table", { id: "batch-js-table" });
    const head = el("tr");
    for (const h of ["#", "文件 File", "状态 Status", "文本 / 错误 Text / Error"]) head.appendChild(el("th", {}, h));
    table.appendChild(head);
    all.forEach((r, i) => {
      const tr = el("tr", { "data-status": r.status, "data-name": r.name });
      tr.appendChild(el("td", {}, String(i + 1)));
      tr.appendChild(el("td", {}, r.name));
      tr.appendChild(el("td", { class: "batch-js-status" }, STATUS_ZH[r.status] || r.status));
      tr.appendChild(el("td", { class: "batch-js-text" }, r.detail));
      table.appendChild(tr);
    });
    box.appendChild(table);

    const ids = groups.filter((g) => g.jobId).map((g) => g.jobId);
    if (finished && ids.length) {
      const query = ids.map((id) => "job_ids=" + encodeURIComponent(id)).join("&");
      box.appendChild(
        el("a", { id: "batch-js-download", class: "batch-js-button", href: api("api/jobs_zip?" + query), download: "" }, "⬇ 全部下载 Download all (zip)")
      );
    }
    root.replaceChildren(box);
    return finished;
  }

  function setBusy(btn, busy) {
    running = busy;
    btn.setAttribute("aria-disabled", String(busy));
    for (const id of ["batch-js-files", "batch-js-folder"]) {
      const input = document.getElementById(id);
      if (input) input.disabled = busy;
    }
  }

  async function runBatch(btn, files) {
    setBusy(btn, true);
    try {
      const started = performance.now();
      const words = hotwords();
      const groups = [];
      for (let i = 0; i < files.length; i += GROUP_SIZE) groups.push({ files: files.slice(i, i + GROUP_SIZE) });
      render(groups, started);
      // All groups go up at once: the server stores each and the scheduler batches across them.
      await Promise.all(groups.map((g) => uploadGroup(g, words)));
      render(groups, started);
      for (;;) {
        const open = groups.filter((g) => g.jobId && !(g.job && g.job.status === "done"));
        if (!open.length) break;
        await Promise.all(open.map(poll));
        if (render(groups, started)) break;
        await new Promise((r) => setTimeout(r, POLL_MS));
      }
      render(groups, started);
    } finally {
      setBusy(btn, false);
    }
  }
})();
