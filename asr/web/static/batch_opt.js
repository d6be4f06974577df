/*
 * batch_opt.js: parallel batch uploads for the Batch tab (批量处理).
 *
 * Loaded into the page through Gradio's `head` hook (see asr/server/app.py). It keeps the File
 * objects chosen in #batch-files / #batch-folder, and when #batch-run is clicked it takes over:
 * the files are split into groups of GROUP_SIZE, each group is uploaded (real multipart upload
 * of the file bytes) to /api/batch_async in parallel, the resulting jobs are polled at
 * /api/jobs/{id}, and aggregated progress and results are rendered into #batch-js-panel.
 *
 * It only uses the public HTTP API, the same one outside clients use. Without the script (or
 * with ?batch_opt=0 in the page URL) the button runs the Gradio handler instead, which creates
 * the same kind of durable job on the server.
 */
(function () {
  "use strict";

  const GROUP_SIZE = 4;
  const POLL_MS = 700;
  const STATUS_ZH = { pending: "等待 pending", running: "处理中 running", done: "完成 done", failed: "失败 failed" };

  if (new URLSearchParams(window.location.search).get("batch_opt") === "0") return;
  if (window.__asrBatchOpt) return; // loaded twice (hot reload): keep the first
  window.__asrBatchOpt = true;

  const scriptSrc = document.currentScript && document.currentScript.src;
  const base = new URL(".", scriptSrc || window.location.href);
  const api = (path) => new URL(path, base).toString();

  // Every File the user picked in either input (the dialog, the "add more" button or a drop),
  // kept so the bytes can be uploaded directly. Which of them are still selected is read from
  // the Gradio component's file list when the button is clicked.
  const pool = [];
  let running = false;

  function inBatchInput(el) {
    return Boolean(el && el.closest && el.closest("#batch-files, #batch-folder"));
  }

  // Capture phase: we see the files before Gradio's own handlers reset the input.
  document.addEventListener(
    "change",
    (ev) => {
      const t = ev.target;
      if (inBatchInput(t) && t.type === "file" && t.files) pool.push(...Array.from(t.files));
    },
    true
  );
  document.addEventListener(
    "drop",
    (ev) => {
      if (inBatchInput(ev.target) && ev.dataTransfer) pool.push(...Array.from(ev.dataTransfer.files));
    },
    true
  );

  // The files listed in the two components, matched to picked File objects by name (latest
  // pick first). null when one cannot be matched: then Gradio's own handler does the work.
  function selectedFiles() {
    const cells = document.querySelectorAll("#batch-files td.filename, #batch-folder td.filename");
    const used = new Set();
    const files = [];
    for (const cell of cells) {
      const name = cell.getAttribute("aria-label") || cell.textContent.trim();
      let found = -1;
      for (let i = pool.length - 1; i >= 0; i--) {
        if (!used.has(i) && pool[i].name === name) {
          found = i;
          break;
        }
      }
      if (found < 0) return null;
      used.add(found);
      files.push(pool[found]);
    }
    return files;
  }

  document.addEventListener(
    "click",
    (ev) => {
      const btn = ev.target.closest && ev.target.closest("#batch-run");
      if (!btn || running) return;
      const files = selectedFiles();
      if (!files || !files.length) return; // nothing to take over: let Gradio handle it
      ev.preventDefault();
      ev.stopImmediatePropagation();
      runBatch(files).catch((err) => renderError(String(err)));
    },
    true
  );

  function hotwords() {
    const box = document.querySelector("#batch-hotwords textarea, #batch-hotwords input");
    return box ? box.value : "";
  }

  // The batch tab's long-audio options, sent with every group as /api/batch_async form fields.
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
    return opts;
  }

  function panel() {
    return document.getElementById("batch-js-panel");
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function renderError(message) {
    const root = panel();
    if (!root) return;
    const note = el("div", { id: "batch-js-error", role: "alert" }, "错误 Error: " + message);
    note.style.color = "#c0392b";
    root.appendChild(note);
    running = false;
  }

  async function uploadGroup(group, words) {
    const form = new FormData();
    for (const f of group.files) form.append("files", f, f.webkitRelativePath || f.name);
    form.append("hotwords", words);
    for (const [k, v] of Object.entries(longOptions())) form.append(k, v);
    const resp = await fetch(api("api/batch_async"), { method: "POST", body: form });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const msg = (body.error && body.error.message) || resp.status + " " + resp.statusText;
      group.error = msg;
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
        let status = item ? item.status : g.error ? "failed" : "pending";
        let detail = "";
        if (g.error) detail = g.error;
        else if (item && item.status === "done") detail = item.result ? item.result.text : "";
        else if (item && item.status === "failed") detail = item.error ? item.error.message : "";
        out.push({ name: f.webkitRelativePath || f.name, status, detail, job: g.jobId });
      });
    }
    return out;
  }

  function render(groups, started) {
    const root = panel();
    if (!root) return;
    const all = rows(groups);
    const done = all.filter((r) => r.status === "done").length;
    const failed = all.filter((r) => r.status === "failed").length;
    const finished = done + failed === all.length;
    const secs = ((performance.now() - started) / 1000).toFixed(1);

    const box = el("div", { id: "batch-js-result", "data-finished": String(finished) });
    const summary = el(
      "div",
      { id: "batch-js-summary", "data-done": String(done), "data-failed": String(failed), "data-total": String(all.length) },
      `并行上传 Parallel upload: ${groups.length} 组 groups × ≤${GROUP_SIZE} · 进度 ${done + failed}/${all.length} · ` +
        `完成 done ${done} · 失败 failed ${failed} · ${secs} s`
    );
    box.appendChild(summary);
    const bar = el("progress", { id: "batch-js-progress", max: String(all.length), value: String(done + failed) });
    bar.style.width = "100%";
    box.appendChild(bar);

    const table = el("table", { id: "batch-js-table" });
    table.style.width = "100%";
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
      const link = el("a", { id: "batch-js-download", href: api("api/jobs_zip?" + query), download: "" }, "全部下载 Download all (zip)");
      box.appendChild(link);
    }
    root.replaceChildren(box);
    return finished;
  }

  async function runBatch(files) {
    running = true;
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
    running = false;
  }
})();
